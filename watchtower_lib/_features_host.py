"""Host context: what each end of a connection did in the window before it.

A scan or a flood is invisible in one row (a bare SYN looks like any failed
connection) and obvious in the host's last minutes: hundreds of destinations,
most of them silent. These features are what lets a model trained on one
network recognise the same behaviour on another, where every address differs.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._features_conn import FAILED_STATES, codes, host_codes, numeric, require_columns, time_ns

log = logging.getLogger(__name__)

_REQUIRED = ("ts", "id.orig_h", "id.resp_h", "id.resp_p", "conn_state")


def window_bounds(group: np.ndarray, t_ns: np.ndarray, window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Sort rows by (group, time) and find where each row's window starts.

    Returns ``order`` (row positions sorted by group then time) and ``lo``:
    for the row at sorted position ``i``, sorted positions ``lo[i] .. i`` are
    the rows of the same group with ``t > t_i - window``. One ``searchsorted``
    over a monotone composite key (group * span + time) does every group at
    once; a tie in time is broken by row order.
    """
    order = np.lexsort((t_ns, group))
    if len(order) == 0:
        return order, order.copy()
    g = group[order].astype("int64")
    g = g - g.min()
    t = t_ns[order]
    unit = 1_000  # microseconds keep the key inside int64 for ~1e5 hosts x 1 year
    rel = (t - t.min()) // unit
    win = int(window_s * 1e9) // unit
    span = int(rel.max()) + win + 1
    if int(g.max()) * span >= 2**62:  # very many hosts over a long span: coarser clock
        unit = 1_000_000_000
        rel = (t - t.min()) // unit
        win = max(1, int(window_s))
        span = int(rel.max()) + win + 1
    key = g * span + rel
    lo = np.searchsorted(key, key - win, side="right")
    return order, lo


def fresh_flags(group: np.ndarray, other: np.ndarray, t_ns: np.ndarray, window_s: float) -> np.ndarray:
    """1 where ``other`` was not seen with ``group`` in the window before this row, else 0."""
    n = len(group)
    flags = np.ones(n, dtype="int64")
    if n == 0:
        return flags
    order = np.lexsort((t_ns, other, group))
    g, o, t = group[order], other[order], t_ns[order]
    same = np.zeros(n, dtype=bool)
    same[1:] = (g[1:] == g[:-1]) & (o[1:] == o[:-1]) & (t[1:] - t[:-1] <= int(window_s * 1e9))
    flags[order] = (~same).astype("int64")
    return flags


def _window_sum(values_sorted: np.ndarray, lo: np.ndarray) -> np.ndarray:
    c = np.concatenate([[0], np.cumsum(values_sorted)])
    idx = np.arange(len(values_sorted))
    return c[idx + 1] - c[lo]


class HostWindowFeatures(TransformerMixin, BaseEstimator):
    """Per-host context over sliding windows ending at each connection.

    For each window ``w`` (seconds) and each connection ``c`` at time ``t``:

    * originator side (``src_*_{w}s``), over the originator's connections in
      ``(t - w, t]``: ``src_conns`` = log1p(count) (the connection rate times
      ``w``), ``src_dsts`` / ``src_ports`` = log1p(distinct responders /
      responder ports), ``src_dst_share`` / ``src_port_share`` = distinct over
      count (1 for a scan, near 0 for a chatty client), ``src_failed_share`` =
      share in a no-handshake state (S0, REJ, RSTOS0, RSTRH, SH, SHR);
    * responder side (``dst_*_{w}s``), over connections *to* the responder:
      ``dst_conns``, ``dst_srcs`` (distinct originators: fan-in, high when the
      Internet knocks on one host) and ``dst_failed_share``.

    Distinct counts are computed exactly for "new within the window": a peer
    counts when the host had not talked to it in the ``w`` seconds before the
    connection that falls in the window. That equals the true distinct count
    whenever peers are not revisited at gaps just under ``w``, and never
    exceeds it; it costs three sorts instead of a per-row set.

    Only the frame passed to ``transform`` is seen: pass whole captures or
    store windows, not a handful of rows, or the context is empty.

    Parameters
    ----------
    windows : window lengths in seconds.
    sensor_column : when the frame has this column (the store's ``_sensor``),
        hosts of different sensors are kept apart.
    """

    def __init__(self, windows: Sequence[float] = (60.0, 3600.0), sensor_column: str = "_sensor"):
        self.windows = windows
        self.sensor_column = sensor_column

    def fit(self, X: pd.DataFrame, y: object = None) -> HostWindowFeatures:
        require_columns(X, _REQUIRED, type(self).__name__)
        self.n_features_in_ = X.shape[1]
        names = []
        for w in self.windows:
            sfx = f"_{int(w)}s"
            names += [f"src_conns{sfx}", f"src_dsts{sfx}", f"src_ports{sfx}", f"src_dst_share{sfx}",
                      f"src_port_share{sfx}", f"src_failed_share{sfx}",
                      f"dst_conns{sfx}", f"dst_srcs{sfx}", f"dst_failed_share{sfx}"]
        self.feature_names_out_ = np.array(names, dtype=object)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        check_is_fitted(self, "feature_names_out_")
        require_columns(X, _REQUIRED, type(self).__name__)
        t = time_ns(X)
        src = host_codes(X, "id.orig_h", self.sensor_column)
        dst = host_codes(X, "id.resp_h", self.sensor_column)
        port = numeric(X, "id.resp_p").astype("int64")
        sc, suniq = codes(X, "conn_state")
        failed_table = np.array([str(v) in FAILED_STATES for v in suniq] + [False])
        failed = failed_table[np.where(sc < 0, len(suniq), sc)].astype("int64")
        cols: dict[str, np.ndarray] = {}
        for w in self.windows:
            sfx = f"_{int(w)}s"
            order, lo = window_bounds(src, t, w)
            count = (np.arange(len(order)) - lo + 1).astype("float64")
            new_dst = fresh_flags(src, dst, t, w)[order]
            new_port = fresh_flags(src, port, t, w)[order]
            n_dst = np.maximum(_window_sum(new_dst, lo), 1)
            n_port = np.maximum(_window_sum(new_port, lo), 1)
            n_fail = _window_sum(failed[order], lo)
            out = {
                f"src_conns{sfx}": np.log1p(count), f"src_dsts{sfx}": np.log1p(n_dst),
                f"src_ports{sfx}": np.log1p(n_port), f"src_dst_share{sfx}": n_dst / count,
                f"src_port_share{sfx}": n_port / count, f"src_failed_share{sfx}": n_fail / count,
            }
            for name, values in out.items():
                cols[name] = np.empty(len(order))
                cols[name][order] = values
            # responder side: the same, keyed by the responder (fan-in)
            order, lo = window_bounds(dst, t, w)
            count = (np.arange(len(order)) - lo + 1).astype("float64")
            new_src = fresh_flags(dst, src, t, w)[order]
            n_src = np.maximum(_window_sum(new_src, lo), 1)
            n_fail = _window_sum(failed[order], lo)
            out = {f"dst_conns{sfx}": np.log1p(count), f"dst_srcs{sfx}": np.log1p(n_src),
                   f"dst_failed_share{sfx}": n_fail / count}
            for name, values in out.items():
                cols[name] = np.empty(len(order))
                cols[name][order] = values
        return pd.DataFrame({k: cols[k] for k in self.feature_names_out_}, index=X.index)

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        check_is_fitted(self, "feature_names_out_")
        return self.feature_names_out_.copy()
