"""Score fitted forests over row blocks that stay in the CPU cache.

Why: scikit-learn's ``predict_proba`` and ``score_samples`` walk the whole
matrix through one tree, then the next. A million connections with 103 float32
features is a 412 MB matrix, so a 100-tree Isolation Forest streams 41 GB from
memory. Here each block of rows (6.6 MB) goes through every tree while it is in
cache, on a thread per core (the trees' ``apply`` releases the GIL), and the
per-leaf values are looked up from small tables computed once per model.

The results are scikit-learn's own formulas on the same leaves (checked
against ``predict_proba`` / ``score_samples`` in ``tests/test_models.py``);
only the order of the float sums differs. Measured on 1,000,000 connections,
2 cores: Isolation Forest 2.3 s -> 1.2 s.

Forests this module does not recognise (feature subsampling in an Isolation
Forest, multi-output forests) are scored by scikit-learn as before.
"""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

BLOCK_ROWS = 16_384  # 16k rows x 103 float32 features = 6.6 MB: measured fastest of 1k..64k


def _leaf_tables(estimator: Any) -> tuple[list[Any], list[np.ndarray], Callable[[np.ndarray], np.ndarray]] | None:
    """(trees, per-node value tables, finish) for a forest we can score blockwise, else None.

    ``finish`` turns the per-row sum over trees into the estimator's score.
    """
    from sklearn.ensemble import IsolationForest, RandomForestClassifier

    trees = [e.tree_ for e in getattr(estimator, "estimators_", [])]
    if not trees:
        return None
    if isinstance(estimator, IsolationForest):
        from sklearn.ensemble._iforest import _average_path_length

        paths = getattr(estimator, "_decision_path_lengths", None)
        per_tree = getattr(estimator, "_average_path_length_per_tree", None)
        features = getattr(estimator, "estimators_features_", None)
        if paths is None or per_tree is None or features is None:
            return None
        if any(len(f) != estimator.n_features_in_ for f in features):
            return None  # trees on feature subsets: leave it to scikit-learn
        tables = [np.asarray(p, dtype=float) + np.asarray(a, dtype=float) - 1.0 for p, a in zip(paths, per_tree)]
        denominator = len(trees) * float(_average_path_length([estimator._max_samples])[0])
        if denominator == 0:
            return None

        def anomaly(depths: np.ndarray) -> np.ndarray:
            return 2.0 ** (-depths / denominator)  # the paper's score = -score_samples

        return trees, tables, anomaly
    if isinstance(estimator, RandomForestClassifier) and getattr(estimator, "n_outputs_", 1) == 1 \
            and len(estimator.classes_) == 2:
        tables = []
        for tree in trees:
            value = np.asarray(tree.value[:, 0, :], dtype=float)
            total = value.sum(axis=1)
            total[total == 0] = 1.0
            tables.append(value[:, 1] / total)
        n = len(trees)

        def mean(sums: np.ndarray) -> np.ndarray:
            return sums / n

        return trees, tables, mean
    return None


def blockwise(estimator: Any, X: np.ndarray, n_jobs: int | None) -> np.ndarray | None:
    """P(class 1) of a binary RandomForestClassifier, or the anomaly score (``-score_samples``) of an
    IsolationForest, over ``X`` (float32, row-major); None when the estimator is not one we score.

    ``n_jobs``: the model's setting (None: every core; see ``_cores``)."""
    prepared = _leaf_tables(estimator)
    if prepared is None or X.dtype != np.float32 or X.ndim != 2 or X.shape[1] != estimator.n_features_in_:
        return None
    trees, tables, finish = prepared
    X = np.ascontiguousarray(X)
    out = np.empty(len(X), dtype=float)

    def score(start: int) -> None:
        block = X[start:start + BLOCK_ROWS]
        sums = np.zeros(len(block), dtype=float)
        for tree, table in zip(trees, tables):
            sums += table[tree.apply(block)]
        out[start:start + len(block)] = finish(sums)

    starts = range(0, len(X), BLOCK_ROWS)
    workers = max(1, min(len(starts), _cores(n_jobs)))
    if workers == 1:
        for start in starts:
            score(start)
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="watchtower-score") as pool:
            list(pool.map(score, starts))
    return out


def _cores(n_jobs: int | None) -> int:
    """Threads for scoring: every core unless the model's ``n_jobs`` says fewer (joblib's
    meaning: -1 all cores, -2 all but one). Scoring threads share one matrix, so they
    cost nothing when idle; ``n_jobs`` set at training time is respected as a cap."""
    import os

    cores = os.cpu_count() or 1
    if n_jobs is None:
        return cores
    if n_jobs < 0:
        return max(1, cores + 1 + n_jobs)
    return max(1, min(n_jobs, cores))
