"""Host-pair features: a beacon score in the spirit of RITA.

Command-and-control implants call home on a timer with small, similar
requests. Over all connections from one originator to one responder,
regular intervals and regular sizes give that away whatever the addresses are.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._features_conn import feature_frame, host_codes, numeric, require_columns, time_ns

log = logging.getLogger(__name__)

_REQUIRED = ("ts", "id.orig_h", "id.resp_h")


def sorted_groups(group: np.ndarray, values: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values sorted within each dense group code (NaN dropped), the groups' start offsets and sizes."""
    keep = ~np.isnan(values)
    g, v = group[keep], values[keep]
    order = np.lexsort((v, g))
    counts = np.bincount(g, minlength=n_groups)
    return v[order], np.cumsum(counts) - counts, counts


def group_quantile(sorted_values: np.ndarray, starts: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """Linear-interpolated ``q`` quantile per group from :func:`sorted_groups`; NaN for empty groups."""
    out = np.full(len(counts), np.nan)
    has = counts > 0
    pos = starts[has] + q * (counts[has] - 1)
    lo = np.floor(pos).astype("int64")
    hi = np.ceil(pos).astype("int64")
    out[has] = sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)
    return out


def bowley(q1: np.ndarray, q2: np.ndarray, q3: np.ndarray) -> np.ndarray:
    """Bowley (quartile) skewness (q1 + q3 - 2 q2) / (q3 - q1); 0 where the quartiles coincide."""
    iqr = q3 - q1
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(iqr > 0, (q1 + q3 - 2 * q2) / iqr, 0.0)
    return np.nan_to_num(out)


def _summary(group: np.ndarray, values: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: median, Bowley skew and MAD (median absolute deviation from the median)."""
    v, starts, counts = sorted_groups(group, values, n_groups)
    q1, q2, q3 = (group_quantile(v, starts, counts, q) for q in (0.25, 0.5, 0.75))
    dev, dstarts, dcounts = sorted_groups(group, np.abs(values - q2[group]), n_groups)
    mad = group_quantile(dev, dstarts, dcounts, 0.5)
    return q2, bowley(q1, q2, q3), mad


class PairBeaconFeatures(TransformerMixin, BaseEstimator):
    """Per (originator, responder) pair: how much its connections look like a beacon.

    Over all ``n`` connections of the pair in the frame, with intervals
    ``d`` between consecutive start times (seconds) and originator payloads
    ``b`` (bytes):

    * ``ts_score = (1 - |bowley(d)| + 1 - min(1, MAD(d) / median(d)) + count) / 3``
      with ``count = min(1, ln(n) / ln(100))`` (a hundred calls is full evidence);
    * ``size_score = (1 - |bowley(b)| + 1 - min(1, MAD(b) / max(median(b), 32))
      + 1 - min(1, median(b) / 65535)) / 3`` (similar, and small);
    * ``pair_beacon_score = (ts_score + size_score) / 2`` in 0..1, and 0 for
      pairs with fewer than ``min_conns`` connections (too few intervals to judge).

    ``bowley(x) = (q1 + q3 - 2 q2) / (q3 - q1)`` is the quartile skewness: 0
    for symmetric jitter around a fixed period. RITA uses the same ingredients
    (Bowley skew, MAD, connection count, data-size smallness); the relative
    MAD here replaces RITA's absolute 30 s / 32 byte scales so that hourly and
    per-second beacons score alike. Like RITA, the score describes the whole
    batch passed to ``transform`` (a capture, a store window), later
    connections included: it is a property of the pair, not of the instant.

    Parameters
    ----------
    min_conns : pairs with fewer connections score 0.
    sensor_column : when present, pairs of different sensors are kept apart.
    """

    def __init__(self, min_conns: int = 4, sensor_column: str = "_sensor"):
        self.min_conns = min_conns
        self.sensor_column = sensor_column

    def fit(self, X: pd.DataFrame, y: object = None) -> PairBeaconFeatures:
        require_columns(X, _REQUIRED, type(self).__name__)
        self.n_features_in_ = X.shape[1]
        self.feature_names_out_ = np.array(
            ["pair_conns_log", "pair_ports_log", "pair_interval_median_log", "pair_interval_mad_rel",
             "pair_interval_skew", "pair_size_mad_rel", "pair_ts_score", "pair_size_score",
             "pair_beacon_score"], dtype=object)
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        check_is_fitted(self, "feature_names_out_")
        require_columns(X, _REQUIRED, type(self).__name__)
        n = len(X)
        src = host_codes(X, "id.orig_h", self.sensor_column)
        dst = host_codes(X, "id.resp_h", self.sensor_column)
        pair_key = src * (int(dst.max(initial=0)) + 2) + dst
        pair, _ = pd.factorize(pair_key)
        n_pairs = int(pair.max()) + 1 if n else 0
        t = time_ns(X)
        order = np.lexsort((t, pair))
        ps, ts = pair[order], t[order]
        gaps = np.full(n, np.nan)
        if n > 1:
            same = ps[1:] == ps[:-1]
            gaps[1:] = np.where(same, (ts[1:] - ts[:-1]) / 1e9, np.nan)
        conns = np.bincount(pair, minlength=n_pairs).astype("float64")
        port = numeric(X, "id.resp_p").astype("int64")
        pp = np.unique(pair.astype("int64") * 65536 + port)
        ports = np.bincount(pp // 65536, minlength=n_pairs).astype("float64")

        d_med, d_skew, d_mad = _summary(ps, gaps, n_pairs)
        size = numeric(X, "orig_bytes")
        b_med, b_skew, b_mad = _summary(pair, size, n_pairs)
        with np.errstate(divide="ignore", invalid="ignore"):
            d_mad_rel = np.where(d_med > 0, np.minimum(1.0, d_mad / d_med), 1.0)
        d_mad_rel = np.nan_to_num(d_mad_rel, nan=1.0)
        b_mad_rel = np.nan_to_num(np.minimum(1.0, b_mad / np.maximum(b_med, 32.0)), nan=1.0)
        count_score = np.minimum(1.0, np.log(np.maximum(conns, 1)) / np.log(100))
        ts_score = (1 - np.abs(d_skew) + 1 - d_mad_rel + count_score) / 3
        size_score = (1 - np.abs(b_skew) + 1 - b_mad_rel + 1 - np.minimum(1.0, np.nan_to_num(b_med) / 65535)) / 3
        enough = conns >= self.min_conns
        ts_score = np.where(enough, ts_score, 0.0)
        size_score = np.where(enough, size_score, 0.0)
        per_pair = {
            "pair_conns_log": np.log1p(conns),
            "pair_ports_log": np.log1p(ports),
            "pair_interval_median_log": np.log1p(np.nan_to_num(d_med)),
            "pair_interval_mad_rel": np.where(enough, d_mad_rel, 1.0),
            "pair_interval_skew": np.where(enough, d_skew, 0.0),
            "pair_size_mad_rel": np.where(enough, b_mad_rel, 1.0),
            "pair_ts_score": ts_score,
            "pair_size_score": size_score,
            "pair_beacon_score": (ts_score + size_score) / 2,
        }
        return feature_frame({k: v[pair] for k, v in per_pair.items()}, self.feature_names_out_, X.index)

    def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
        check_is_fitted(self, "feature_names_out_")
        return self.feature_names_out_.copy()
