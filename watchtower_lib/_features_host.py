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

from ._features_conn import FAILED_STATES, codes, feature_frame, host_codes, numeric, require_columns, time_ns

log = logging.getLogger(__name__)

_REQUIRED = ("ts", "id.orig_h", "id.resp_h", "id.resp_p", "conn_state")


def sort_by_group(group: np.ndarray, t_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Row positions sorted by (group, time), a monotone int64 key in that order, and its time unit (ns).

    The key is ``group * span + time`` (time in microseconds since the
    earliest row; milliseconds or seconds when that would overflow int64), so
    one ``searchsorted`` finds every row's window start in every group at once.
    """
    order = np.lexsort((t_ns, group))
    if len(order) == 0:
        return order, order.astype("int64"), 1_000
    g = group[order].astype("int64")
    t = t_ns[order]
    for unit in (1_000, 1_000_000, 1_000_000_000):
        rel = (t - t.min()) // unit
        span = int(rel.max()) + 86_400 * 366 * (1_000_000_000 // unit) + 1  # windows up to a year
        if int(g.max()) * span < 2**62:
            break
    return order, g * span + rel, unit


def window_starts(key: np.ndarray, unit: int, window_s: float) -> np.ndarray:
    """For each sorted position ``i``: the first position of its group with ``t > t_i - window``."""
    return np.searchsorted(key, key - int(window_s * 1e9) // unit, side="right")


class PeerChains:
    """Exact distinct-peer counts over sliding windows, without a per-row set.

    An occurrence of peer ``p`` at time ``s`` keeps ``p`` in the window of
    every connection at ``t`` with ``s <= t < s + w``. Merging the occurrences
    of each (host, peer) whose gaps are at most ``w`` gives chains; a chain
    starting at ``a`` and ending with an occurrence at ``b`` covers
    ``[a, b + w)``. The distinct count at ``t`` is then (chain starts <= t)
    minus (chain ends ``b + w`` <= t) for that host: a cumulative sum over
    sorted +1/-1 events and one ``searchsorted`` for all rows.
    """

    def __init__(self, group: np.ndarray, other: np.ndarray, t_ns: np.ndarray):
        self.group, self.t = group.astype("int64"), t_ns
        pair = self.group * (int(other.max(initial=0)) + 1) + other.astype("int64")
        order = np.lexsort((t_ns, pair))
        p, self.ts, self.gs = pair[order], t_ns[order], self.group[order]
        new = np.ones(len(p), dtype=bool)
        new[1:] = p[1:] != p[:-1]
        self.first = new
        self.last = np.ones(len(p), dtype=bool)
        self.last[:-1] = new[1:]
        self.gap = np.full(len(p), np.iinfo("int64").max, dtype="int64")
        self.gap[1:] = np.where(new[1:], np.iinfo("int64").max, self.ts[1:] - self.ts[:-1])

    def distinct(self, window_s: float) -> np.ndarray:
        """Distinct peers per row (original row order) in ``(t - window, t]``."""
        n = len(self.t)
        if n == 0:
            return np.zeros(0)
        w = int(window_s * 1e9)
        start = self.first | (self.gap > w)
        end = self.last.copy()
        end[:-1] |= start[1:]
        ev_g = np.concatenate([self.gs[start], self.gs[end]])
        ev_t = np.concatenate([self.ts[start], self.ts[end] + w])
        ev_v = np.concatenate([np.ones(int(start.sum()), "int64"), -np.ones(int(end.sum()), "int64")])
        t0 = min(int(ev_t.min()), int(self.t.min()))
        span = int(max(int(ev_t.max()), int(self.t.max())) - t0) // 1_000 + 2
        unit = 1_000
        if int(ev_g.max()) * span >= 2**62:  # too many hosts for microseconds: milliseconds
            unit, span = 1_000_000, span // 1_000 + 2
        key = ev_g * span + (ev_t - t0) // unit
        eo = np.argsort(key, kind="stable")  # order among equal keys does not change the sums read below
        ev_key = key[eo]
        cs = np.cumsum(ev_v[eo])
        q_key = self.group * span + (self.t - t0) // unit
        idx = np.searchsorted(ev_key, q_key, side="right") - 1
        return cs[np.maximum(idx, 0)].astype("float64")


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

    Distinct counts are exact (see :class:`PeerChains`); a row's window holds
    the host's rows with ``t - w < t' <= t`` (times to the microsecond; rows
    with the very same time are ordered by position).

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
        port = port - port.min(initial=0)
        src_order, src_key, src_unit = sort_by_group(src, t)
        dst_order, dst_key, dst_unit = sort_by_group(dst, t)
        chains_dst, chains_port, chains_src = PeerChains(src, dst, t), PeerChains(src, port, t), PeerChains(dst, src, t)
        fail_src, fail_dst = failed[src_order], failed[dst_order]
        cols: dict[str, np.ndarray] = {}
        for w in self.windows:
            sfx = f"_{int(w)}s"
            lo = window_starts(src_key, src_unit, w)
            count = (np.arange(len(lo)) - lo + 1).astype("float64")
            n_dst = np.maximum(chains_dst.distinct(w)[src_order], 1)
            n_port = np.maximum(chains_port.distinct(w)[src_order], 1)
            n_fail = _window_sum(fail_src, lo)
            out = {
                f"src_conns{sfx}": np.log1p(count), f"src_dsts{sfx}": np.log1p(n_dst),
                f"src_ports{sfx}": np.log1p(n_port), f"src_dst_share{sfx}": n_dst / count,
                f"src_port_share{sfx}": n_port / count, f"src_failed_share{sfx}": n_fail / count,
            }
            for name, values in out.items():
                cols[name] = np.empty(len(lo))
                cols[name][src_order] = values
            # responder side: the same, keyed by the responder (fan-in)
            lo = window_starts(dst_key, dst_unit, w)
            count = (np.arange(len(lo)) - lo + 1).astype("float64")
            n_src = np.maximum(chains_src.distinct(w)[dst_order], 1)
            n_fail = _window_sum(fail_dst, lo)
            out = {f"dst_conns{sfx}": np.log1p(count), f"dst_srcs{sfx}": np.log1p(n_src),
                   f"dst_failed_share{sfx}": n_fail / count}
            for name, values in out.items():
                cols[name] = np.empty(len(lo))
                cols[name][dst_order] = values
        return feature_frame(cols, self.feature_names_out_, X.index)

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        check_is_fitted(self, "feature_names_out_")
        return self.feature_names_out_.copy()
