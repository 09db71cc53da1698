"""DNS features, where a dns log is joined to the conn frame by ``uid``.

Domain-generation algorithms (Simda, Conficker ...) make long, random-looking
names that mostly do not exist: query length, character entropy and the
host's NXDOMAIN ratio catch that without any list of bad domains.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._features_conn import codes, feature_frame, host_codes, require_columns

log = logging.getLogger(__name__)

# columns of other logs that join_logs copies onto conn rows, prefixed by the log type
JOIN_COLUMNS = {
    "dns": ("query", "qtype_name", "rcode_name", "answers"),
    "http": ("method", "host", "uri", "status_code", "user_agent"),
    "ssl": ("version", "server_name", "established", "validation_status"),
}


def join_logs(conn: pd.DataFrame, **logs: pd.DataFrame | None) -> pd.DataFrame:
    """Return a copy of ``conn`` with columns of other Zeek logs joined by ``uid``.

    ``join_logs(conn, dns=dns_df, http=http_df, ssl=ssl_df)`` adds
    ``dns.query``, ``dns.rcode_name``, ``http.host`` ... (see ``JOIN_COLUMNS``);
    where one connection has several records (a DNS retry, HTTP pipelining)
    the first one counts. Connections without a record get NA. The input
    frame is not modified.

    Raises
    ------
    ValueError : a log type not in ``JOIN_COLUMNS``.
    """
    out = conn.copy()
    for kind, frame in logs.items():
        if kind not in JOIN_COLUMNS:
            raise ValueError(f"join_logs: unknown log type {kind!r}; known: {sorted(JOIN_COLUMNS)}")
        if frame is None:
            continue
        require_columns(frame, ("uid",), f"join_logs({kind}=...)")
        wanted = [c for c in JOIN_COLUMNS[kind] if c in frame.columns]
        first = frame.drop_duplicates("uid", keep="first").set_index("uid")[wanted]
        first.columns = [f"{kind}.{c}" for c in wanted]
        joined = first.reindex(out["uid"])
        for col in first.columns:
            out[col] = joined[col].to_numpy() if joined[col].dtype == object else joined[col].array
    return out


def char_entropy(names: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Shannon entropy (bits per character) of each string, vectorised over byte counts."""
    out = np.zeros(len(names))
    for start in range(0, len(names), chunk):
        part = np.asarray([s.encode("utf-8", "replace")[:255] for s in names[start:start + chunk]],
                          dtype="S255")
        mat = part.view(np.uint8).reshape(len(part), 255)
        lengths = (mat != 0).sum(axis=1)
        counts = np.zeros((len(part), 256), dtype=np.int32)
        rows = np.repeat(np.arange(len(part)), 255)
        np.add.at(counts, (rows, mat.ravel()), 1)
        counts[:, 0] = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            p = counts / np.maximum(lengths, 1)[:, None]
            h = -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)
        out[start:start + chunk] = h
    return out


class DnsFeatures(TransformerMixin, BaseEstimator):
    """Features of the DNS query a connection carried (zeros when it carried none).

    Reads ``dns.query`` and ``dns.rcode_name`` as added by :func:`join_logs`.
    A frame without them (no dns log given) yields all-zero columns, so one
    fitted model serves sensors with and without a dns log.

    Output: ``dns_has_query`` (0/1), ``dns_query_len``, ``dns_labels``
    (dot-separated labels), ``dns_entropy`` (bits per character of the
    query), ``dns_nxdomain`` (this answer) and ``dns_host_nxdomain_ratio``
    (share of the originator's queries in the frame that got NXDOMAIN).
    """

    def __init__(self, query_column: str = "dns.query", rcode_column: str = "dns.rcode_name",
                 sensor_column: str = "_sensor"):
        self.query_column = query_column
        self.rcode_column = rcode_column
        self.sensor_column = sensor_column

    def fit(self, X: pd.DataFrame, y: object = None) -> DnsFeatures:
        require_columns(X, ("id.orig_h",), type(self).__name__)
        self.n_features_in_ = X.shape[1]
        self.feature_names_out_ = np.array(
            ["dns_has_query", "dns_query_len", "dns_labels", "dns_entropy", "dns_nxdomain",
             "dns_host_nxdomain_ratio"], dtype=object)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        check_is_fitted(self, "feature_names_out_")
        require_columns(X, ("id.orig_h",), type(self).__name__)
        n = len(X)
        zeros = {k: np.zeros(n) for k in self.feature_names_out_}
        if self.query_column not in X.columns:
            return feature_frame(zeros, self.feature_names_out_, X.index)
        qc, quniq = codes(X, self.query_column)
        names = np.asarray([str(q) for q in quniq], dtype=object)
        has = qc >= 0
        per_query = np.zeros((len(names) + 1, 3))
        if len(names):
            per_query[:-1, 0] = [len(s) for s in names]
            per_query[:-1, 1] = [s.count(".") + 1 for s in names]
            per_query[:-1, 2] = char_entropy(names)
        block = per_query[np.where(has, qc, len(names))]
        if self.rcode_column in X.columns:
            nx = (X[self.rcode_column] == "NXDOMAIN").fillna(False).to_numpy(dtype=bool).astype(float)
        else:
            nx = np.zeros(n)
        src = host_codes(X, "id.orig_h", self.sensor_column)
        asked = np.bincount(src, weights=has.astype(float))
        failed = np.bincount(src, weights=nx)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(asked > 0, failed / asked, 0.0)
        out = {
            "dns_has_query": has.astype(float), "dns_query_len": block[:, 0], "dns_labels": block[:, 1],
            "dns_entropy": block[:, 2], "dns_nxdomain": nx, "dns_host_nxdomain_ratio": ratio[src],
        }
        return feature_frame(out, self.feature_names_out_, X.index)

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        check_is_fitted(self, "feature_names_out_")
        return self.feature_names_out_.copy()
