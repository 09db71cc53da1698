"""The statistics behind ``behaviour``: PSI, Jensen-Shannon distance, two-sample KS, hour ranges.

Why apart: small, pure numpy functions with their own tests, reused by the report;
``behaviour`` re-exports them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PSI_BINS = 10


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``actual`` against ``expected``.

    Bins are the deciles of ``expected`` (lower order statistics, ties merged), plus
    everything below and above; empty bins count as 1e-4 so one new value cannot make it infinite.
    """
    expected = np.asarray(expected, dtype=float)
    actual = np.asarray(actual, dtype=float)
    expected, actual = expected[~np.isnan(expected)], actual[~np.isnan(actual)]
    if len(expected) == 0 or len(actual) == 0:
        return float("nan")
    ordered = np.sort(expected)
    edges = np.unique(ordered[(np.linspace(0, 1, bins + 1)[1:-1] * (len(ordered) - 1)).astype(int)])
    e = np.bincount(np.searchsorted(edges, expected, side="right"), minlength=len(edges) + 1) / len(expected)
    q = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=len(edges) + 1) / len(actual)
    e, q = np.clip(e, 1e-4, None), np.clip(q, 1e-4, None)
    return float(np.sum((q - e) * np.log(q / e)))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two histograms; NaN if one is empty."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p.sum() == 0 or q.sum() == 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log2(x[mask] / m[mask])))

    return float(np.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0)))


def hour_ranges(hours: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"03:00-05:59, 09:00-09:59"`` (hours as clock ranges)."""
    hours = sorted(set(int(h) for h in hours))
    parts: list[str] = []
    i = 0
    while i < len(hours):
        j = i
        while j + 1 < len(hours) and hours[j + 1] == hours[j] + 1:
            j += 1
        parts.append(f"{hours[i]:02d}:00-{hours[j]:02d}:59")
        i = j + 1
    return ", ".join(parts)


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: (statistic D, asymptotic two-sided p-value).

    D is exact (largest gap between the two empirical CDFs). The p-value is the
    limiting Kolmogorov distribution at ``sqrt(n*m/(n+m)) * D`` (``scipy.special.kolmogorov``),
    fine for week-sized samples; scipy.stats' ``method="asymp"`` differs by a few percent
    at moderate p. In numpy, because importing scipy.stats costs seconds in every report run.
    """
    a = np.sort(np.asarray(a, dtype=float))
    b = np.sort(np.asarray(b, dtype=float))
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan")
    values = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, values, side="right") / len(a)
    cdf_b = np.searchsorted(b, values, side="right") / len(b)
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    en = np.sqrt(len(a) * len(b) / (len(a) + len(b)))
    lam = en * d
    if lam < 1e-3:
        return d, 1.0
    j = np.arange(1, 101)
    p = 2.0 * np.sum((-1.0) ** (j - 1) * np.exp(-2.0 * j**2 * lam**2))
    return d, float(min(max(p, 0.0), 1.0))
