"""Evaluation by capture: train on some captures, score one the models never saw.

Splitting rows of one capture at random leaks: the same hosts, pairs and
even the same beacon appear on both sides, and every figure is inflated.
Here a capture is the unit of splitting, always.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (average_precision_score, confusion_matrix, precision_recall_fscore_support,
                             roc_auc_score, roc_curve)

log = logging.getLogger(__name__)

FIXED_FPR = 0.01


def recall_at_fpr(y: np.ndarray, score: np.ndarray, fpr: float = FIXED_FPR) -> tuple[float, float]:
    """(recall, threshold) at the best operating point whose false-positive rate is <= ``fpr``.

    An alert fires at ``score >= threshold``.
    """
    if y.all() or not y.any():
        return float("nan"), float("nan")
    f, t, thr = roc_curve(y, score)
    ok = np.flatnonzero(f <= fpr)
    best = ok[np.argmax(t[ok])]
    return float(t[best]), float(min(thr[best], 1.0))


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, Any]:
    """Per-class precision/recall/F1 at ``threshold``, PR-AUC, ROC-AUC, confusion, recall at 1% FPR."""
    y = np.asarray(y, dtype=bool)
    pred = np.asarray(score) >= threshold
    p, r, f1, support = precision_recall_fscore_support(y, pred, labels=[False, True], zero_division=0)
    both = bool(y.any() and (~y).any())
    rec, thr = recall_at_fpr(y, score)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[False, True]).ravel()
    return {
        "rows": int(len(y)), "malicious": int(y.sum()), "benign": int((~y).sum()),
        "threshold": float(threshold),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(("benign", "malicious"))},
        "pr_auc": float(average_precision_score(y, score)) if both else float("nan"),
        "roc_auc": float(roc_auc_score(y, score)) if both else float("nan"),
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "fpr": float(fp / max(fp + tn, 1)),
        f"recall_at_fpr_{FIXED_FPR:g}": rec, f"threshold_at_fpr_{FIXED_FPR:g}": thr,
    }


def _labelled(df: pd.DataFrame) -> np.ndarray:
    return df["label"].isin(["benign", "malicious"]).fillna(False).to_numpy(dtype=bool)


def _fit(train: list[pd.DataFrame], *, random_state: int, n_jobs: int | None,
         unsupervised: bool = True) -> tuple[Any, Any, float]:
    """Forest on ``train``; Isolation Forest on the benign rows of ``train`` only (a benign
    baseline) and its threshold: the anomaly score 1% of that baseline exceeds."""
    from .models import build_supervised, build_unsupervised

    data = pd.concat(train, ignore_index=True)
    sup = build_supervised(random_state, n_jobs=n_jobs).fit(data, data["label"])
    if not unsupervised:
        return sup, None, float("nan")
    uns = build_unsupervised(random_state, n_jobs=n_jobs)
    feats = uns[:-1].fit_transform(data)
    benign = feats[(data["label"] == "benign").fillna(False).to_numpy(dtype=bool)]
    uns[-1].fit(benign)
    uthr = float(np.quantile(np.clip(-uns[-1].score_samples(benign), 0, 1), 1 - FIXED_FPR))
    return sup, uns, uthr


def _score(sup: Any, uns: Any, test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, P(malicious), anomaly score) for the labelled rows of ``test`` (features over all rows)."""
    keep = _labelled(test)
    y = (test["label"][keep] == "malicious").to_numpy(dtype=bool)
    proba = np.asarray(sup.predict_proba(test))[:, 1][keep]
    anomaly = np.clip(-uns.score_samples(test), 0, 1)[keep] if uns is not None else np.full(len(y), np.nan)
    return y, proba, anomaly


def cross_capture(caps: dict[str, pd.DataFrame], *, random_state: int = 0,
                  n_jobs: int | None = None) -> tuple[dict[str, Any], float]:
    """Leave-one-capture-out over ``caps``: metrics per held-out capture and pooled, and the
    threshold giving a 1% false-positive rate on the pooled held-out benign traffic."""
    ys, ps = [], []
    per: dict[str, Any] = {}
    for name, test in caps.items():
        train = [df for other, df in caps.items() if other != name]
        train_labels = pd.concat([df["label"] for df in train])
        if not {"benign", "malicious"} <= set(train_labels.dropna()):
            log.warning("leave-out %s: the other captures lack a class; skipped", name)
            continue
        sup, _, _ = _fit(train, random_state=random_state, n_jobs=n_jobs, unsupervised=False)
        y, proba, _ = _score(sup, None, test)
        per[name] = binary_metrics(y, proba, 0.5)
        ys.append(y)
        ps.append(proba)
    if not ys:
        return {}, 0.5
    y, p = np.concatenate(ys), np.concatenate(ps)
    _, threshold = recall_at_fpr(y, p)
    threshold = 0.5 if np.isnan(threshold) else threshold
    pooled = binary_metrics(y, p, threshold)
    return {"protocol": "leave-one-capture-out", "pooled": pooled, "per_capture": per}, float(threshold)


def evaluate(train: dict[str, pd.DataFrame], test: dict[str, pd.DataFrame], *, random_state: int = 0,
             n_jobs: int | None = None) -> dict[str, Any]:
    """Train on ``train`` captures, evaluate on ``test`` captures (none may be in both).

    The forest's alert threshold is chosen without looking at ``test``: by
    leave-one-capture-out on the training captures when there are two or
    more (1% FPR on their pooled held-out benign traffic), else 0.5.
    ``recall_at_fpr_0.01`` is a point of the test ROC curve, not a tuned
    threshold. The Isolation Forest is trained on the training captures'
    benign rows only; its alert threshold is the score 1% of that baseline exceeds.

    Returns
    -------
    ``{"supervised": {"pooled": ..., "per_capture": {...}}, "unsupervised": {...}, "threshold": t}``
    """
    overlap = set(train) & set(test)
    if overlap:
        from .errors import ModelError

        raise ModelError(f"captures both in --train and --test: {sorted(overlap)}; evaluation must use "
                         f"captures the model never saw")
    threshold = 0.5
    if len(train) >= 2:
        _, threshold = cross_capture(train, random_state=random_state, n_jobs=n_jobs)
    ys, ps, an = [], [], []
    sup: dict[str, Any] = {}
    uns: dict[str, Any] = {}
    forest, iforest, uthr = _fit(list(train.values()), random_state=random_state, n_jobs=n_jobs)
    for name, df in test.items():
        y, proba, anomaly = _score(forest, iforest, df)
        sup[name] = binary_metrics(y, proba, threshold)
        uns[name] = binary_metrics(y, anomaly, uthr)
        ys.append(y)
        ps.append(proba)
        an.append(anomaly)
    y = np.concatenate(ys)
    return {
        "train": sorted(train), "test": sorted(test), "threshold": threshold, "anomaly_threshold": uthr,
        "supervised": {"pooled": binary_metrics(y, np.concatenate(ps), threshold), "per_capture": sup},
        "unsupervised": {"pooled": binary_metrics(y, np.concatenate(an), uthr), "per_capture": uns},
    }
