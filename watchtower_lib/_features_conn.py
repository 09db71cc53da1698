"""Per-connection features: what one Zeek ``conn`` row says on its own.

Shared column helpers for the other ``_features_*`` modules live here too.
Every transform is vectorised: string columns are factorised once and the
few distinct values (states, histories, services) are mapped, so a million
rows cost a handful of numpy passes, not a Python loop.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .errors import ModelError

log = logging.getLogger(__name__)

CONN_STATES = ("S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH")
# states where the responder never completed a handshake: the probe got nothing back
FAILED_STATES = ("S0", "REJ", "RSTOS0", "RSTRH", "SH", "SHR")
SERVICES = ("dns", "http", "ssl", "ssh", "dhcp", "ntp", "sip", "smtp", "ftp", "irc")
PROTOS = ("tcp", "udp", "icmp")
# Zeek history letters: upper case = originator, lower case = responder, ^ = direction flipped
HISTORY_FLAGS = tuple(
    [(ch, f"hist_o_{ch.lower()}") for ch in "SHADFRCTWIQ"]
    + [(ch, f"hist_r_{ch}") for ch in "shadfrctwiq"]
    + [("^", "hist_flipped")]
)

_COUNT_COLUMNS = ("orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes")


def require_columns(X: object, columns: Iterable[str], who: str) -> pd.DataFrame:
    """Check that ``X`` is a DataFrame with ``columns``; raise ModelError naming what is missing."""
    if not isinstance(X, pd.DataFrame):
        raise ModelError(
            f"{who} takes a Zeek conn DataFrame (watchtower_lib.zeek.read_log), got {type(X).__name__}"
        )
    missing = [c for c in columns if c not in X.columns]
    if missing:
        raise ModelError(
            f"{who}: the frame lacks column(s) {missing}; it needs a Zeek conn log as read by "
            f"watchtower_lib.zeek.read_log (columns keep Zeek's names, e.g. 'id.orig_h')"
        )
    return X


def numeric(X: pd.DataFrame, column: str, fill: float = 0.0) -> np.ndarray:
    """Column as float64; unset (NA) becomes ``fill``. Timedeltas become seconds."""
    if column not in X.columns:
        return np.full(len(X), fill, dtype="float64")
    s = X[column]
    if pd.api.types.is_timedelta64_dtype(s.dtype):
        out = s.to_numpy(dtype="timedelta64[ns]").astype("int64").astype("float64") / 1e9
        out[s.isna().to_numpy()] = fill
        return out
    return s.to_numpy(dtype="float64", na_value=fill)


def time_ns(X: pd.DataFrame, column: str = "ts") -> np.ndarray:
    """``ts`` as int64 nanoseconds since the epoch (NaT -> 0, the epoch)."""
    s = X[column]
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        arr = s.array
        values = np.asarray(arr.asi8 if hasattr(arr, "asi8") else s.to_numpy().astype("int64"), dtype="int64")
        return np.where(s.isna().to_numpy(), 0, values)
    # relative or numeric timestamps (seconds), e.g. a frame built by hand
    return (np.nan_to_num(numeric(X, column)) * 1e9).astype("int64")


def codes(X: pd.DataFrame, column: str) -> tuple[np.ndarray, pd.Index]:
    """Factorise a string column once: (codes with -1 for NA, distinct values)."""
    if column not in X.columns:
        return np.full(len(X), -1, dtype="int64"), pd.Index([], dtype=object)
    c, uniques = pd.factorize(X[column], use_na_sentinel=True)
    return np.asarray(c, dtype="int64"), pd.Index(uniques)


def host_codes(X: pd.DataFrame, column: str, sensor_column: str | None) -> np.ndarray:
    """Dense codes of an address column, kept apart per sensor when ``sensor_column`` is present.

    Two captures (or two sensors) can both have a 192.168.1.10; their
    connections must not share one host's window. NA addresses form one group.
    """
    c, uniq = codes(X, column)
    if sensor_column and sensor_column in X.columns:
        s, _ = codes(X, sensor_column)
        c = np.asarray(pd.factorize((s + 1) * (len(uniq) + 2) + (c + 1))[0], dtype="int64")
    else:
        c = np.where(c < 0, len(uniq), c)
    return c


def map_codes(c: np.ndarray, table: np.ndarray, na_row: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Columns ``names`` taken by code from ``table`` (one row per distinct value); NA rows get ``na_row``.

    One gather per column from a tiny table: contiguous writes, no rows x columns temporary.
    """
    table = np.asarray(table, dtype=np.float32).reshape(-1, len(na_row))
    full_t = np.ascontiguousarray(np.vstack([table, np.asarray(na_row, dtype=np.float32)[None, :]]).T)
    idx = np.where(c < 0, len(table), c)
    return {name: full_t[i][idx] for i, name in enumerate(names)}


FEATURE_DTYPE = np.float32  # what the trees use internally: computing in it saves a copy per stage


def feature_frame(cols: dict[str, np.ndarray], names: Sequence[str] | np.ndarray, index: pd.Index) -> pd.DataFrame:
    """One float32 block wrapped as a DataFrame without another copy.

    Filled feature by feature into a (features x rows) array - contiguous
    writes - whose transpose is exactly the block layout pandas keeps.
    """
    out = np.empty((len(names), len(index)), dtype=FEATURE_DTYPE)
    for j, name in enumerate(names):
        out[j] = cols[name]
    return pd.DataFrame(out.T, columns=list(names), index=index, copy=False)


def port_class(port: np.ndarray) -> np.ndarray:
    """0 = well-known (< 1024), 1 = registered (1024-49151), 2 = dynamic (>= 49152)."""
    return np.where(port < 1024, 0, np.where(port < 49152, 1, 2))


class ConnFeatures(TransformerMixin, BaseEstimator):
    """Features of one connection on its own (no context).

    Sizes and counts go through ``log1p`` so that the Isolation Forest, which
    splits uniformly between min and max, does not spend every split on the
    heavy tail. Unset counts (Zeek's ``-``, e.g. a bare SYN) count as 0 bytes,
    and ``bytes_unset`` says so. Ports are reduced to their class (well-known,
    registered, dynamic): the number itself would let a model memorise one
    network's services.

    Parameters
    ----------
    states, services :
        The ``conn_state`` and ``service`` values given their own indicator
        column; anything else lands in ``state_other`` / ``service_other``.
    """

    def __init__(self, states: Sequence[str] = CONN_STATES, services: Sequence[str] = SERVICES):
        self.states = states
        self.services = services

    def fit(self, X: pd.DataFrame, y: object = None) -> ConnFeatures:
        require_columns(X, ("proto", "conn_state"), type(self).__name__)
        self.n_features_in_ = X.shape[1]
        self.feature_names_out_ = np.array(self._names(), dtype=object)
        return self

    def _names(self) -> list[str]:
        names = [
            "duration_log", "orig_bytes_log", "resp_bytes_log", "orig_pkts_log", "resp_pkts_log",
            "orig_ip_bytes_log", "resp_ip_bytes_log", "resp_byte_share", "resp_pkt_share",
            "orig_bytes_per_pkt_log", "resp_bytes_per_pkt_log", "missed_bytes_log", "bytes_unset",
            "no_reply",
        ]
        names += [f"state_{s}" for s in self.states] + ["state_other"]
        names += [name for _, name in HISTORY_FLAGS] + ["history_len"]
        names += [f"proto_{p}" for p in PROTOS]
        names += [f"service_{s}" for s in self.services] + ["service_other", "service_none"]
        names += ["resp_port_class", "orig_port_class", "resp_port_zero"]
        return names

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        check_is_fitted(self, "feature_names_out_")
        require_columns(X, ("proto", "conn_state"), type(self).__name__)
        n = len(X)
        cols: dict[str, np.ndarray] = {}
        dur = numeric(X, "duration")
        cols["duration_log"] = np.log1p(np.clip(dur, 0, None))
        raw = {col: np.clip(numeric(X, col), 0, None) for col in _COUNT_COLUMNS}
        for col in _COUNT_COLUMNS:
            cols[f"{col}_log"] = np.log1p(raw[col])
        ob, rb, op, rp = raw["orig_bytes"], raw["resp_bytes"], raw["orig_pkts"], raw["resp_pkts"]
        with np.errstate(divide="ignore", invalid="ignore"):
            cols["resp_byte_share"] = np.where(ob + rb > 0, rb / (ob + rb), 0.0)
            cols["resp_pkt_share"] = np.where(op + rp > 0, rp / (op + rp), 0.0)
            cols["orig_bytes_per_pkt_log"] = np.log1p(np.where(op > 0, raw["orig_ip_bytes"] / op, 0.0))
            cols["resp_bytes_per_pkt_log"] = np.log1p(np.where(rp > 0, raw["resp_ip_bytes"] / rp, 0.0))
        cols["missed_bytes_log"] = np.log1p(np.clip(numeric(X, "missed_bytes"), 0, None))
        cols["bytes_unset"] = (X["orig_bytes"].isna().to_numpy() if "orig_bytes" in X else np.ones(n)).astype(float)
        cols["no_reply"] = (rp == 0).astype(float)

        c, uniq = codes(X, "conn_state")
        values = [str(u) for u in uniq]
        table = np.array([[v == s for s in self.states] + [v not in self.states] for v in values], dtype=float)
        na_row = np.zeros(len(self.states) + 1)
        na_row[-1] = 1.0
        cols.update(map_codes(c, table, na_row, [f"state_{s}" for s in [*self.states, "other"]]))

        c, uniq = codes(X, "history")
        table = np.array([[ch in str(v) for ch, _ in HISTORY_FLAGS] + [len(str(v))] for v in uniq],
                         dtype=float)
        cols.update(map_codes(c, table, np.zeros(len(HISTORY_FLAGS) + 1),
                              [name for _, name in HISTORY_FLAGS] + ["history_len"]))

        c, uniq = codes(X, "proto")
        table = np.array([[str(v) == p for p in PROTOS] for v in uniq], dtype=float)
        cols.update(map_codes(c, table, np.zeros(len(PROTOS)), [f"proto_{p}" for p in PROTOS]))

        c, uniq = codes(X, "service")
        # Zeek may list several analysers ("ssl,http"): the first one decides
        first = [str(v).split(",")[0] for v in uniq]
        table = np.array([[f == s for s in self.services] + [f not in self.services, 0.0] for f in first],
                         dtype=float)
        na_row = np.zeros(len(self.services) + 2)
        na_row[-1] = 1.0
        cols.update(map_codes(c, table, na_row, [f"service_{s}" for s in [*self.services, "other", "none"]]))

        rport = numeric(X, "id.resp_p")
        cols["resp_port_class"] = port_class(rport).astype(float)
        cols["orig_port_class"] = port_class(numeric(X, "id.orig_p")).astype(float)
        cols["resp_port_zero"] = (rport == 0).astype(float)
        return feature_frame(cols, self.feature_names_out_, X.index)

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        check_is_fitted(self, "feature_names_out_")
        return self.feature_names_out_.copy()
