"""Detection models: a Random Forest for known attacks, an Isolation Forest for the unknown.

Both are scikit-learn ``Pipeline`` s that take the raw Zeek conn DataFrame:
``features`` (:func:`watchtower_lib.features.build_features`) ->
``baseline`` (:class:`~watchtower_lib.features.FeatureBaseline`, which keeps
the training medians for explanations) -> the forest. Host and pair context
is computed over the frame passed in, so score whole captures or store
windows, never a handful of rows.

Model files, cards and versions live in :mod:`watchtower_lib._model_store`
(re-exported here); cross-capture evaluation in :mod:`watchtower_lib._model_eval`.
"""
from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest, RandomForestClassifier
from sklearn.pipeline import Pipeline

from ._model_store import (ALLOWED_TYPES, ModelVersion, VersionComparison, compare_versions, feature_names,
                           latest, load, new_version, prune, read_card, save, sha256_file, versions)
from .errors import ModelError
from ._forest_scoring import blockwise
from .features import FeatureBaseline, build_features, join_logs

log = logging.getLogger(__name__)

__all__ = [
    "LabelForest", "ModelVersion", "VersionComparison", "ALLOWED_TYPES",
    "build_supervised", "build_unsupervised", "training_rows", "anomaly_score", "malicious_proba", "score_both",
    "predict_family", "explain", "baseline_medians", "train_supervised", "retrain_unsupervised",
    "read_captures", "save", "load", "read_card", "latest", "versions", "prune", "compare_versions",
    "feature_names", "feature_importances", "training_files", "LABELLED_GLOB",
]

LABELS = ("benign", "malicious")


class LabelForest(RandomForestClassifier):
    """A RandomForestClassifier that takes Watch Tower labels and knows attack families.

    ``fit(X, y, detail=None)``: ``y`` may be the ``label`` column of
    :func:`watchtower_lib.labels.read_labelled` (``benign`` / ``malicious`` /
    ``unknown``) or 0/1. Rows labelled ``unknown`` (or NA) are dropped here,
    inside ``fit``, *after* the features were computed over every row: the
    unlabelled background traffic still counts as host and pair context, it
    just is not a training target. ``classes_`` is always ``[0, 1]``, so
    ``predict_proba(X)[:, 1]`` is P(malicious).

    When ``detail`` (the labels' attack family, e.g. ``C&C``, ``DDoS``) is
    given, a second forest ``family_forest_`` learns the family of the
    malicious rows that have one; :func:`predict_family` uses it.
    """

    def fit(self, X: Any, y: Any, sample_weight: Any = None, detail: Any = None) -> LabelForest:
        import scipy.sparse as sp
        from sklearn.utils import check_consistent_length, column_or_1d

        if not hasattr(X, "iloc") and not sp.issparse(X):
            X = np.asarray(X)
        y = column_or_1d(np.asarray(y, dtype=object) if not isinstance(y, np.ndarray) else y)
        check_consistent_length(X, y, sample_weight, detail)
        target, keep = _binary_labels(y)
        if len(np.unique(target[keep])) < 2:
            raise ModelError("training needs both benign and malicious rows; got only "
                             f"{sorted(set(np.asarray(y, dtype=object)[keep].tolist()))}")
        Xk = X[keep] if not hasattr(X, "iloc") else X.iloc[np.flatnonzero(keep)]
        sw = None if sample_weight is None else np.asarray(sample_weight)[keep]
        super().fit(Xk, target[keep], sample_weight=sw)
        self.family_classes_ = np.array([], dtype=object)
        if detail is not None:
            fam = pd.Series(np.asarray(pd.array(detail, dtype="string").fillna(""), dtype=object))
            fam = fam.str.strip().replace({"(empty)": "", "-": ""})
            use = keep & (target == 1) & (fam.to_numpy() != "")
            if use.any():
                self.family_forest_ = RandomForestClassifier(
                    n_estimators=50, min_samples_leaf=2, random_state=self.random_state, n_jobs=self.n_jobs)
                Xf = X[use] if not hasattr(X, "iloc") else X.iloc[np.flatnonzero(use)]
                self.family_forest_.fit(Xf, fam.to_numpy()[use])
                self.family_classes_ = self.family_forest_.classes_
        return self


def _binary_labels(y: Any) -> tuple[np.ndarray, np.ndarray]:
    """(0/1 target, rows to keep) from label strings or 0/1 values (vectorised, no per-row Python)."""
    series = pd.Series(np.asarray(y, dtype=object) if not isinstance(y, pd.Series) else y.to_numpy(dtype=object))
    text = series.astype("string").str.strip().str.lower()
    known = text.isin(["benign", "malicious", "unknown"]) | text.isna() | (text == "")
    if bool(known.all()):
        target = (text == "malicious").fillna(False).to_numpy(dtype=bool).astype("int64")
        return target, text.isin(LABELS).fillna(False).to_numpy(dtype=bool)
    num = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    if np.isnan(num).all():
        raise ModelError(f"labels must be benign/malicious/unknown or 0/1, got e.g. {series.head(3).tolist()}")
    return (num == 1).astype("int64"), ~np.isnan(num)


def _array_features(windows: tuple[float, ...]) -> Any:
    """The feature union with plain array output: inside a model, the four frames are stacked once
    into one row-major float32 array that the baseline and the forest use without another copy.
    (``build_features()`` on its own returns a DataFrame, for notebooks.)"""
    return build_features(windows).set_output(transform="default")


def build_supervised(random_state: int = 0, *, n_estimators: int = 60, max_depth: int | None = 14,
                     n_jobs: int | None = None, windows: tuple[float, ...] = (60.0, 3600.0)) -> Pipeline:
    """Unfitted pipeline: features -> baseline -> :class:`LabelForest` (class-weighted).

    ``class_weight="balanced_subsample"`` weighs each class by the inverse of
    its frequency in every bootstrap sample: a capture that is 90% attack
    does not teach the forest that everything is an attack, nor the reverse.
    """
    forest = LabelForest(n_estimators=n_estimators, class_weight="balanced_subsample", min_samples_leaf=2,
                         max_depth=max_depth, random_state=random_state, n_jobs=n_jobs)
    return Pipeline([("features", _array_features(windows)), ("baseline", FeatureBaseline()),
                     ("forest", forest)])


def build_unsupervised(random_state: int = 0, *, n_estimators: int = 100, n_jobs: int | None = None,
                       windows: tuple[float, ...] = (60.0, 3600.0)) -> Pipeline:
    """Unfitted pipeline: features -> baseline -> IsolationForest (256-row subsamples)."""
    forest = IsolationForest(n_estimators=n_estimators, max_samples=256, random_state=random_state,
                             n_jobs=n_jobs)
    return Pipeline([("features", _array_features(windows)), ("baseline", FeatureBaseline()),
                     ("forest", forest)])


def training_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows labelled benign or malicious (``unknown`` / background left out).

    Not needed before ``fit`` (:class:`LabelForest` drops them itself, keeping
    them as context); useful to count what a model learns from.
    """
    if "label" not in df.columns:
        raise ModelError("training_rows needs the 'label' column of watchtower_lib.labels.read_labelled")
    return df[df["label"].isin(LABELS).fillna(False).to_numpy(dtype=bool)]


def malicious_proba(model: Pipeline, conn_df: pd.DataFrame) -> np.ndarray:
    """P(malicious) per connection from a fitted supervised pipeline (``predict_proba(conn_df)[:, 1]``,
    scored blockwise on every core: ``_forest_scoring``)."""
    return _score_features(model[-1], features_of(model, conn_df))


def _threads(estimator: Any) -> Any:
    """A joblib context running the Isolation Forest's per-tree scoring on ``n_jobs`` threads.

    scikit-learn scores trees sequentially unless told otherwise; its tree
    walks release the GIL, so threads use every core the model was given.
    """
    from joblib import parallel_config

    n_jobs = getattr(estimator, "n_jobs", None) or 1
    return parallel_config(backend="threading", n_jobs=n_jobs)


def anomaly_score(model: Pipeline, conn_df: pd.DataFrame) -> np.ndarray:
    """Anomaly score in 0..1, higher = more anomalous.

    It is minus scikit-learn's ``score_samples``, which is exactly the score
    of the Isolation Forest paper, ``2 ** (-E[h(x)] / c(n))``: about 0.5 for
    ordinary rows, towards 1 for rows isolated in few splits. Rows are
    scored blockwise on every core (``_forest_scoring``).
    """
    return _score_features(model[-1], features_of(model, conn_df))


def same_features(a: Pipeline, b: Pipeline) -> bool:
    """True when two fitted pipelines compute the same feature matrix (same settings, same names),
    so one ``features_of`` serves both. The baseline step differs per model only in its medians,
    which ``transform`` does not use."""
    def settings(model: Pipeline) -> list[tuple[str, dict[str, Any]]]:
        return [(name, t.get_params()) for name, t in model.named_steps["features"].transformer_list]

    return settings(a) == settings(b) and feature_names(a) == feature_names(b)


def features_of(model: Pipeline, conn_df: pd.DataFrame) -> Any:
    """What the pipeline's final estimator sees for ``conn_df`` (for Watch Tower's pipelines a
    row-major float32 array): compute it once and hand it to ``score_features``, ``explain`` and
    ``predict_family`` (``features=``)."""
    return model[:-1].transform(conn_df)


def score_features(model: Pipeline, X: Any) -> np.ndarray:
    """P(malicious) or anomaly score (0..1) from a matrix of ``features_of``."""
    return _score_features(model[-1], X)


def score_both(supervised: Pipeline, unsupervised: Pipeline, conn_df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(P(malicious), anomaly score) per connection, computing the features once when the two
    pipelines use the same feature settings (else each pipeline computes its own).

    Same results as ``malicious_proba`` and ``anomaly_score`` called one after the other, at about
    half the feature cost: features are the most expensive stage (``docs/benchmarks.md``).
    """
    if not same_features(supervised, unsupervised):
        return malicious_proba(supervised, conn_df), anomaly_score(unsupervised, conn_df)
    feats = features_of(supervised, conn_df)
    return _score_features(supervised[-1], feats), _score_features(unsupervised[-1], feats)


def _score_features(estimator: Any, X: Any) -> np.ndarray:
    fast = blockwise(estimator, X, getattr(estimator, "n_jobs", None)) if isinstance(X, np.ndarray) else None
    if hasattr(estimator, "predict_proba"):
        return fast if fast is not None else np.asarray(estimator.predict_proba(X))[:, 1]
    if fast is None:
        with _threads(estimator):
            fast = -np.asarray(estimator.score_samples(X), dtype=float)
    return np.clip(fast, 0.0, 1.0)


def _feature_matrix(model: Pipeline, conn_df: pd.DataFrame, rows: Any,
                    features: Any = None) -> tuple[np.ndarray, list[str]]:
    names = feature_names(model)
    arr = np.asarray(features_of(model, conn_df) if features is None else features, dtype=np.float32)
    if arr.shape != (len(conn_df), len(names)):
        raise ModelError(f"features= has shape {arr.shape}; expected ({len(conn_df)}, {len(names)}) "
                         f"from features_of(model, conn_df)")
    if rows is not None:
        arr = arr[np.asarray(rows)]
    return arr, names


def predict_family(model: Pipeline, conn_df: pd.DataFrame, rows: Any = None, *,
                   features: Any = None) -> np.ndarray:
    """Most likely attack family (e.g. ``C&C``) per connection, from the forest's family model.

    The family is "what it would be if malicious": read it for rows the forest
    flags. ``rows`` (positions or a boolean mask) picks rows after the
    features were computed over the whole frame.

    Raises
    ------
    ModelError : the forest was trained without ``detail`` labels.
    """
    forest = model[-1]
    if getattr(forest, "family_forest_", None) is None:
        raise ModelError("this supervised model knows no attack families (trained without 'detail')")
    X, _ = _feature_matrix(model, conn_df, rows, features)
    return np.asarray(forest.family_forest_.predict(X), dtype=object)


def baseline_medians(model: Pipeline) -> pd.Series:
    """The training median of every feature (what explanations compare with)."""
    return pd.Series(model.named_steps["baseline"].medians_, index=feature_names(model))


def explain(model: Pipeline, conn_df: pd.DataFrame, top: int = 3, rows: Any = None,
            chunk: int = 200, *, features: Any = None) -> list[list[dict[str, Any]]]:
    """The ``top`` features that pushed each connection's score most.

    For every feature, the row's score is recomputed with that one feature set
    to its training median; ``effect`` = score - score-at-median, so a
    positive effect pushed the row towards malicious / anomalous. Works for
    both pipelines (P(malicious) or anomaly score). Features are computed over
    the whole ``conn_df`` (context), then only ``rows`` are explained; pass
    ``features=features_of(model, conn_df)`` when you already have them.

    Returns
    -------
    One list per explained row, of dicts ``{"feature", "value",
    "baseline_median", "effect"}``, strongest push first.
    """
    X, names = _feature_matrix(model, conn_df, rows, features)
    med = np.asarray(model.named_steps["baseline"].medians_, dtype=float)
    est = model[-1]
    n, f = X.shape
    out: list[list[dict[str, Any]]] = []
    for start in range(0, n, chunk):  # chunk rows x f perturbations per forest call
        part = X[start:start + chunk]
        m = len(part)
        base = _score_features(est, part)
        stacked = np.repeat(part, f, axis=0)
        cols = np.tile(np.arange(f), m)
        stacked[np.arange(m * f), cols] = med[cols]
        moved = _score_features(est, stacked).reshape(m, f)
        effect = base[:, None] - moved
        for i in range(m):
            order = np.argsort(-effect[i], kind="stable")[:top]
            out.append([{"feature": names[j], "value": float(part[i, j]), "baseline_median": float(med[j]),
                         "effect": float(effect[i, j])} for j in order])
    return out


def read_captures(paths: Sequence[str | Path]) -> dict[str, pd.DataFrame]:
    """Read labelled captures, each tagged with its own ``_sensor`` (its directory name) if it has none.

    Captures are kept apart so that two networks' 192.168.1.10 never share
    a host window. A ``dns.log`` (or ``dns.log.labeled``) beside a conn log
    is joined by uid (:func:`watchtower_lib.features.join_logs`).
    """
    from . import zeek
    from .labels import read_labelled

    out: dict[str, pd.DataFrame] = {}
    for p in map(Path, paths):
        df = read_labelled(p)
        dns_file = next((d for d in (p.parent / n for n in ("dns.log.labeled", "dns.log", "dns.log.gz"))
                         if d.is_file()), None)
        if dns_file is not None:
            df = join_logs(df, dns=zeek.read_log(dns_file))
        name = p.parent.name if p.parent.name else p.name
        while name in out:
            name += "+"
        if "_sensor" not in df.columns:
            df = df.assign(_sensor=pd.array([name] * len(df), dtype="string"))
        out[name] = df
    return out


def train_supervised(paths: Sequence[str | Path], *, models_dir: str | Path, random_state: int = 0,
                     n_jobs: int | None = None, keep: int = 5, progress: bool | None = False) -> ModelVersion:
    """Train the forest on labelled captures, version it and write its card.

    With two or more captures, the card's ``metrics`` come from
    leave-one-capture-out (each capture scored by a forest that never saw it)
    and ``threshold`` is the P(malicious) at which that pooled held-out
    benign traffic has a 1% false-positive rate. With one capture there is
    no honest estimate: metrics are empty and the threshold is 0.5.
    ``progress``: a bar of the steps on stderr (None: when it is a terminal).
    """
    from ._model_eval import cross_capture
    from ._progress import Steps

    with Steps(3, "train", progress) as steps:
        steps.start(f"reading {len(paths)} labelled capture(s)")
        caps = read_captures(paths)
        data = pd.concat(caps.values(), ignore_index=True)
        metrics: dict[str, Any] = {}
        threshold = 0.5
        steps.start(f"leaving each of {len(caps)} captures out in turn")
        if len(caps) >= 2:
            metrics, threshold = cross_capture(caps, random_state=random_state, n_jobs=n_jobs)
        steps.start(f"fitting the forest on {len(data):,} rows")
        model = build_supervised(random_state, n_jobs=n_jobs)
        model.fit(data, data["label"], forest__detail=data.get("detail"))
    version, vdir = new_version(models_dir, "supervised")
    labelled = training_rows(data)
    card = {
        "kind": "supervised", "version": version, "threshold": float(threshold),
        "training": {
            "files": [{"path": str(p), "sha256": sha256_file(p)} for p in paths],
            "rows": int(len(labelled)), "rows_total": int(len(data)),
            "class_counts": {str(k): int(v) for k, v in data["label"].value_counts().items()},
            "families": [str(c) for c in model[-1].family_classes_],
        },
        "metrics": metrics, "random_state": random_state,
    }
    save(model, vdir, card)
    prune(models_dir, "supervised", keep)
    return ModelVersion("supervised", version, vdir, read_card(vdir))


def _alerted_uids(alerts_db: str | Path | None) -> set[str]:
    """uids already alerted (the alert store's ``alerts`` table), read defensively; empty if absent."""
    if alerts_db is None or not Path(alerts_db).is_file():
        return set()
    try:
        con = sqlite3.connect(f"file:{Path(alerts_db).resolve()}?mode=ro", uri=True)
        try:
            cols = {r[1] for r in con.execute("PRAGMA table_info(alerts)")}
            if "uid" not in cols:
                log.warning("%s: table 'alerts' has no uid column; nothing left out of training", alerts_db)
                return set()
            return {str(r[0]) for r in con.execute("SELECT DISTINCT uid FROM alerts WHERE uid IS NOT NULL")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        log.warning("%s: could not read alerted uids (%s); nothing left out of training", alerts_db, exc)
        return set()


def retrain_unsupervised(store_dir: str | Path, end: Any, window_days: int = 7, *, models_dir: str | Path,
                         alerts_db: str | Path | None = None, target_alert_rate: float = 0.01, keep: int = 5,
                         random_state: int = 0, n_jobs: int | None = None) -> ModelVersion:
    """Retrain the Isolation Forest on the store's last ``window_days`` before ``end``.

    Connections already alerted (uids in ``alerts_db``'s ``alerts`` table) are
    left out of training but stay in the frame as host context. The alert
    threshold is the anomaly score above which ``target_alert_rate`` of the
    training window falls. The model is saved as a new version under
    ``models_dir/unsupervised`` and only the newest ``keep`` are kept.

    Raises
    ------
    ModelError : nothing to train on in the window.
    """
    from . import store

    end_ts = pd.Timestamp(end)
    end_ts = end_ts.tz_localize(UTC) if end_ts.tzinfo is None else end_ts.tz_convert(UTC)
    start_ts = end_ts - timedelta(days=window_days)
    conn = store.load(store_dir, "conn", start_ts, end_ts)
    if "dns" in store.log_types(store_dir):
        conn = join_logs(conn, dns=store.load(store_dir, "dns", start_ts, end_ts, columns=["uid", "query", "rcode_name"]))
    alerted = _alerted_uids(alerts_db)
    is_alerted = conn["uid"].isin(alerted).fillna(False).to_numpy(dtype=bool) if alerted else np.zeros(len(conn), bool)
    if len(conn) - is_alerted.sum() < 2:
        raise ModelError(f"{store_dir}: only {len(conn) - int(is_alerted.sum())} unalerted conn rows between "
                         f"{start_ts} and {end_ts}; ingest more data or widen window_days")
    model = build_unsupervised(random_state, n_jobs=n_jobs)
    feats = model[:-1].fit_transform(conn)  # features over everything: alerted rows are context
    model[-1].fit(feats[~is_alerted])
    score = np.clip(-model[-1].score_samples(feats[~is_alerted]), 0, 1)
    threshold = float(np.quantile(score, 1 - target_alert_rate))
    version, vdir = new_version(models_dir, "unsupervised")
    files = sorted(Path(store_dir, "conn").glob("date=*/*.parquet"))
    in_window = [p for p in files if start_ts.strftime("%Y-%m-%d") <= p.parent.name[5:] <= end_ts.strftime("%Y-%m-%d")]
    card: dict[str, Any] = {
        "kind": "unsupervised", "version": version, "threshold": threshold,
        "target_alert_rate": target_alert_rate,
        "training": {
            "store_dir": str(store_dir), "start": start_ts.isoformat(), "end": end_ts.isoformat(),
            "files": [{"path": str(p), "sha256": sha256_file(p)} for p in in_window],
            "rows": int((~is_alerted).sum()), "rows_total": int(len(conn)),
            "excluded_alerted": int(is_alerted.sum()),
            "class_counts": {"unlabelled": int((~is_alerted).sum())},
        },
        "metrics": {"training_alert_rate": float((score >= threshold).mean())},
        "random_state": random_state, "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    save(model, vdir, card)
    removed = prune(models_dir, "unsupervised", keep)
    log.info("unsupervised %s: %d rows (%d alerted left out), threshold %.4f, %d old versions removed",
             version, card["training"]["rows"], card["training"]["excluded_alerted"], threshold, len(removed))
    return ModelVersion("unsupervised", version, vdir, read_card(vdir))


#: where phase 4 and ``watchtower train --supervised`` find labelled captures when given none
LABELLED_GLOB = "labelled/*/conn*.labeled"


def training_files(data_dir: str | Path, paths: Sequence[str | Path] = ()) -> list[str]:
    """The labelled conn logs to train the forest on: ``paths``, else every ``data_dir/labelled/*/conn*.labeled``.

    One default for the notebook and the command, sorted so a rerun trains on the same files in the
    same order. Raises ``ModelError`` when none are given and none are found (naming where it looked).
    """
    if paths:
        return [str(p) for p in paths]
    found = sorted(str(p) for p in Path(data_dir).glob(LABELLED_GLOB))
    if not found:
        raise ModelError(f"no labelled conn logs ({LABELLED_GLOB}) under {data_dir}: give the files to train on "
                         f"(watchtower train --supervised PATHS..., or the notebook's labelled_paths)")
    return found


def feature_importances(model: Pipeline, top: int | None = 20) -> pd.Series:
    """What the supervised forest looks at most: impurity importance per feature (all sum to 1), largest first.

    ``top`` keeps that many (None: all). Raises ``ModelError`` for a model without importances
    (the Isolation Forest has none).
    """
    forest = model[-1]
    if not hasattr(forest, "feature_importances_"):
        raise ModelError(f"{type(forest).__name__} has no feature importances: pass the supervised model")
    index = pd.Index(feature_names(model), name="feature")
    ranked = pd.Series(forest.feature_importances_, index=index, name="importance").sort_values(
        ascending=False, kind="stable")
    return ranked if top is None else ranked.head(top)
