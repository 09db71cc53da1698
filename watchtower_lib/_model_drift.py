"""How far this period's traffic has moved from what a model learnt as normal.

Why: a model is only as good as the match between its training data and today's
traffic. The card of every version records each feature's training median and
quartiles. For each feature we count the period's connections outside the
training's middle half ``[q25, q75]``: on traffic like the training data that
share is about 0.5 for a continuous feature and 0 for one that was constant in
training (a flag, a one-hot state); the exact share is recorded when the model
is fitted (``FeatureBaseline.outside_``). What a period has *beyond* it,
``unlike_training`` in 0..1, says which behaviour the model has not seen
(a new service, many more failed handshakes) before its alerts go wrong, on one
scale for flags and measures alike. (A median shift in IQRs, as
``compare_versions`` uses between versions, explodes for flags, whose IQR is 0.)
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

COLUMNS = ["feature", "median_training", "q25_training", "q75_training", "median_period", "unlike_training"]


def period_drift(model: Any, card: dict[str, Any], conn: pd.DataFrame) -> pd.DataFrame:
    """Per feature: the training quartiles (from ``card``), this frame's median, and ``unlike_training``.

    Parameters
    ----------
    model : the fitted pipeline the card belongs to (its features are computed over ``conn``).
    card : the version's card (``feature_stats``).
    conn : the period's conn rows, as the store gives them (the whole period: context matters).

    Returns
    -------
    DataFrame with the ``COLUMNS``, largest ``unlike_training`` first; empty when ``conn`` is
    empty or the card has no feature statistics.
    """
    from .models import feature_names, features_of

    stats = card.get("feature_stats", {})
    if conn.empty or not stats:
        return pd.DataFrame(columns=COLUMNS)
    names = [n for n in feature_names(model) if n in stats]
    X = np.asarray(features_of(model, conn), dtype=np.float64)[:, [feature_names(model).index(n) for n in names]]
    q25 = np.array([stats[n]["q25"] for n in names])
    q75 = np.array([stats[n]["q75"] for n in names])
    outside = ((X < q25) | (X > q75)).mean(axis=0)
    expected = _training_outside(model, names)
    drift = pd.DataFrame({
        "feature": names, "median_training": [stats[n]["median"] for n in names], "q25_training": q25,
        "q75_training": q75, "median_period": np.median(X, axis=0),
        "unlike_training": np.clip(outside - expected, 0.0, 1.0),
    })
    return drift.sort_values("unlike_training", ascending=False, kind="stable", ignore_index=True)


def _training_outside(model: Any, names: list[str]) -> np.ndarray:
    """The training data's own share outside its quartiles per feature (``FeatureBaseline.outside_``).
    Models saved before it was recorded get 0.5 (a continuous feature's share) where q25 < q75."""
    from .models import feature_names

    baseline = model.named_steps.get("baseline")
    share = getattr(baseline, "outside_", None)
    if share is None:
        return np.where(baseline.q75_ > baseline.q25_, 0.5, 0.0)[[feature_names(model).index(n) for n in names]]
    return np.asarray(share, dtype=float)[[feature_names(model).index(n) for n in names]]
