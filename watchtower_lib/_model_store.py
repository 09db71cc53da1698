"""Model files: skops (never pickle), a JSON card beside each, versions on disk.

Layout: ``models/<kind>/<version>/model.skops`` + ``card.json``, with
``version`` the UTC training time (``20261203T194500Z``). Loading checks the
file's types against an explicit allow-list before anything is built, then
checks that the features and the scikit-learn version still match the code.

Why saving builds a version under a hidden temporary name and renames the
folder: every detection run reads the newest version, so a crash (or a full
disk) mid-save must leave either the whole version or none of it, never a
model without its card or a truncated card. Listing skips hidden folders, and
a version whose card cannot be read is skipped with a warning instead of
breaking every later run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._atomic import fsync_path, write_atomic, write_text_atomic
from .errors import ModelError

log = logging.getLogger(__name__)

MODEL_FILE = "model.skops"
CARD_FILE = "card.json"
KINDS = ("supervised", "unsupervised")

# Types skops does not trust by default that a Watch Tower model may contain.
# Anything else in a model file refuses to load: a crafted file cannot make us
# import and call arbitrary code.
ALLOWED_TYPES = frozenset({
    "watchtower_lib._features_conn.ConnFeatures",
    "watchtower_lib._features_host.HostWindowFeatures",
    "watchtower_lib._features_pair.PairBeaconFeatures",
    "watchtower_lib._features_dns.DnsFeatures",
    "watchtower_lib.features.FeatureBaseline",
    "watchtower_lib.features.ThreadedFeatureUnion",
    "watchtower_lib.models.LabelForest",
    "sklearn.tree._tree.Tree",  # the fitted trees' arrays (skops does not trust it by default)
})


class ModelStoreWarning(UserWarning):
    """A saved model version was skipped (its folder names it, and how to fix it)."""


@dataclass(frozen=True)
class ModelVersion:
    """One saved model: where it is and what its card says."""

    kind: str
    version: str
    path: Path  # the version directory
    card: dict[str, Any] = field(repr=False)

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def threshold(self) -> float | None:
        value = self.card.get("threshold")
        return None if value is None else float(value)

    def load(self) -> Any:
        """The fitted pipeline (see :func:`load`)."""
        return load(self.path)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import sklearn
    import skops

    from . import __version__

    return {"watchtower": __version__, "scikit-learn": sklearn.__version__, "skops": skops.__version__,
            "numpy": np.__version__, "pandas": pd.__version__, "python": platform.python_version()}


def feature_names(model: Any) -> list[str]:
    """Names of the features the fitted pipeline's estimator sees."""
    steps = model.named_steps if hasattr(model, "named_steps") else {}
    baseline, union = steps.get("baseline"), steps.get("features")
    if baseline is None or union is None or not hasattr(baseline, "medians_"):
        raise ModelError(f"{type(model).__name__} is not a fitted Watch Tower pipeline "
                         f"(needs fitted 'features' and 'baseline' steps)")
    names = [str(n) for n in union.get_feature_names_out()]
    if len(names) != baseline.n_features_in_:
        raise ModelError(f"the pipeline's features ({len(names)}) and baseline ({baseline.n_features_in_}) disagree")
    return names


def feature_stats(model: Any) -> dict[str, dict[str, float]]:
    """Per feature: training median and quartiles (the baseline), for cards and drift."""
    b = model.named_steps["baseline"]
    return {name: {"median": float(m), "q25": float(lo), "q75": float(hi)}
            for name, m, lo, hi in zip(feature_names(model), b.medians_, b.q25_, b.q75_)}


def _resolve(path: str | Path) -> tuple[Path, Path]:
    """(model file, card file) for a version directory or a ``.skops`` file."""
    p = Path(path)
    model_file = p / MODEL_FILE if p.is_dir() else p
    return model_file, model_file.with_name(CARD_FILE)


def save(model: Any, path: str | Path, card: dict[str, Any]) -> Path:
    """Write ``model`` with skops to ``path`` (a ``.skops`` file or a directory) and ``card.json`` beside it.

    The card is completed with the feature list, baseline statistics and
    library versions when missing; its values must be JSON-serialisable.

    A directory that does not exist yet (or is empty, as :func:`new_version`
    leaves it) is built as ``.<name>.tmp-<pid>`` beside it, every file fsynced,
    and renamed into place in one step. Into an existing non-empty directory or
    to a ``.skops`` path, each file is replaced atomically (temp file, fsync,
    rename), model first: a crash between the two leaves the old card, whose
    SHA-256 then refuses the new model in :func:`load` (a clear error, never a
    half-written file).

    Returns
    -------
    The model file written.
    """
    import skops.io as sio

    p = Path(path)
    full = dict(card)
    full.setdefault("features", feature_names(model))
    full.setdefault("feature_stats", feature_stats(model))
    full.setdefault("versions", library_versions())
    full.setdefault("saved_at", datetime.now(UTC).isoformat(timespec="seconds"))
    _drop_frame_caches(model)

    def write_card(target: Path, model_file: Path) -> None:
        full["model_sha256"] = sha256_file(model_file)
        text = json.dumps(full, indent=2, sort_keys=True, default=str)
        write_text_atomic(target, text)

    if p.suffix == ".skops" or (p.is_dir() and any(p.iterdir())):
        model_file = p if p.suffix == ".skops" else p / MODEL_FILE
        model_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(model_file, lambda tmp: sio.dump(model, tmp))
        write_card(model_file.with_name(CARD_FILE), model_file)
    else:
        p.parent.mkdir(parents=True, exist_ok=True)
        building = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        shutil.rmtree(building, ignore_errors=True)  # left by a crash of this same pid number
        building.mkdir()
        try:
            sio.dump(model, building / MODEL_FILE)
            fsync_path(building / MODEL_FILE)
            write_card(building / CARD_FILE, building / MODEL_FILE)
            fsync_path(building)
            os.replace(building, p)  # replaces an empty directory too
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        fsync_path(p.parent)
        model_file = p / MODEL_FILE
    log.info("saved %s (%d features)", model_file, len(full["features"]))
    return model_file


def _drop_frame_caches(model: Any) -> None:
    """Remove FeatureUnion's cache of pandas column Indexes (skops cannot store pandas objects).

    scikit-learn rebuilds it on every ``transform``; it is only a fallback for
    transformers without ``get_feature_names_out``, and ours all have one.
    """
    from sklearn.pipeline import FeatureUnion

    steps = [step for _, step in getattr(model, "steps", [])] or [model]
    for step in steps:
        if isinstance(step, FeatureUnion) and hasattr(step, "_transformers_feature_names_out"):
            del step._transformers_feature_names_out


def read_card(path: str | Path) -> dict[str, Any]:
    """The card of a version directory or model file."""
    _, card_file = _resolve(path)
    if not card_file.is_file():
        raise ModelError(f"{card_file}: model card missing; a model without its card cannot be checked. "
                         f"Retrain with `watchtower train`.")
    try:
        card = json.loads(card_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{card_file}: model card is not valid JSON ({exc})") from exc
    except OSError as exc:
        raise ModelError(f"{card_file}: model card cannot be read ({exc})") from exc
    if not isinstance(card, dict):
        raise ModelError(f"{card_file}: model card is not a JSON object")
    return card


def load(path: str | Path) -> Any:
    """Load a model saved by :func:`save`, refusing anything unsafe or stale.

    Raises
    ------
    ModelError
        the file or card is missing; the file holds a type outside the
        allow-list; it was written by another scikit-learn version; or its
        features differ from what this version of Watch Tower computes.
    """
    import sklearn
    import skops.io as sio

    model_file, _ = _resolve(path)
    if not model_file.is_file():
        raise ModelError(f"{model_file}: no model file; train one with `watchtower train`")
    card = read_card(model_file)
    trained_with = card.get("versions", {}).get("scikit-learn")
    if trained_with != sklearn.__version__:
        raise ModelError(f"{model_file}: trained with scikit-learn {trained_with}, this environment has "
                         f"{sklearn.__version__}; retrain (`watchtower train`) or install "
                         f"scikit-learn=={trained_with}")
    untrusted = set(sio.get_untrusted_types(file=model_file))
    unsafe = sorted(untrusted - ALLOWED_TYPES)
    if unsafe:
        raise ModelError(f"{model_file}: refusing to load types outside Watch Tower's allow-list: {unsafe}")
    if card.get("model_sha256") and sha256_file(model_file) != card["model_sha256"]:
        raise ModelError(f"{model_file}: SHA-256 differs from its card; the file was changed after saving")
    model = sio.load(model_file, trusted=sorted(untrusted))
    _check_features(model, card, model_file)
    return model


def _check_features(model: Any, card: dict[str, Any], model_file: Path) -> None:
    from sklearn.base import clone

    from .features import empty_conn_frame

    stored = feature_names(model)
    if card.get("features") is not None and list(card["features"]) != stored:
        raise ModelError(f"{model_file}: the card lists other features than the model holds; "
                         f"the card or the model file was replaced")
    current = [str(n) for n in clone(model.named_steps["features"]).fit(empty_conn_frame())
               .get_feature_names_out()]
    if current != stored:
        added = sorted(set(current) - set(stored))
        removed = sorted(set(stored) - set(current))
        raise ModelError(f"{model_file}: features changed since this model was trained "
                         f"(now computed but not in the model: {added or 'none'}; in the model but no longer "
                         f"computed: {removed or 'none'}{'; same names, other order' if not added and not removed else ''}); "
                         f"retrain with `watchtower train`")


def new_version(models_dir: str | Path, kind: str) -> tuple[str, Path]:
    """A fresh version name (UTC time) and its directory, unique even within one second."""
    if kind not in KINDS:
        raise ModelError(f"model kind must be one of {KINDS}, got {kind!r}")
    base = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    root = Path(models_dir) / kind
    version, n = base, 1
    while (root / version).exists():
        version = f"{base}-{n}"
        n += 1
    return version, root / version


def versions(models_dir: str | Path, kind: str) -> list[ModelVersion]:
    """Saved versions of ``kind``, oldest first.

    Directories without a card, and hidden ones (a save in progress or one a
    crash interrupted), are ignored. A version whose card cannot be read is
    skipped with a :class:`ModelStoreWarning` naming it, so that one damaged
    folder does not stop every detection run; the newest readable version serves.
    """
    root = Path(models_dir) / kind
    if not root.is_dir():
        return []
    found = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                    and (p / CARD_FILE).is_file()):
        try:
            card = read_card(d)
        except ModelError as exc:
            warnings.warn(f"skipped model version {d}: {exc}. Delete that folder (rm -r '{d}') or retrain "
                          f"(`watchtower train`); the other versions are used meanwhile", ModelStoreWarning,
                          stacklevel=2)
            continue
        found.append(ModelVersion(kind, d.name, d, card))
    return found


def latest(models_dir: str | Path, kind: str) -> Path | None:
    """The newest version directory of ``kind`` (pass it to :func:`load`), or None."""
    found = versions(models_dir, kind)
    return found[-1].path if found else None


def prune(models_dir: str | Path, kind: str, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` versions; returns what was removed."""
    found = versions(models_dir, kind)
    removed = []
    for old in found[:-keep] if keep > 0 else found:
        shutil.rmtree(old.path)
        removed.append(old.path)
        log.info("removed old model version %s", old.path)
    return removed


@dataclass(frozen=True)
class VersionComparison:
    """How a model version differs from another (older -> newer)."""

    old: str
    new: str
    threshold: tuple[float | None, float | None]
    training_rows: tuple[int | None, int | None]
    features_added: list[str]
    features_removed: list[str]
    drift: pd.DataFrame  # feature, median_old, median_new, iqr_old, shift (|delta median| / IQR)

    def summary(self) -> str:
        top = self.drift.head(3)
        moved = ", ".join(f"{r.feature} {r.median_old:.3g}->{r.median_new:.3g}" for r in top.itertuples())
        return (f"{self.old} -> {self.new}: threshold {self.threshold[0]} -> {self.threshold[1]}, "
                f"training rows {self.training_rows[0]} -> {self.training_rows[1]}, "
                f"{len(self.features_added)} features added, {len(self.features_removed)} removed; "
                f"largest baseline shifts: {moved or 'none'}")


def compare_versions(a: ModelVersion | str | Path, b: ModelVersion | str | Path) -> VersionComparison:
    """Compare two versions by their cards (no model is loaded).

    Feature drift is the shift of each feature's training median, in units of
    the older version's interquartile range (floored at 1e-9 * |median| + 1e-6
    so constant features do not divide by zero); sorted largest first.
    """
    ca = a.card if isinstance(a, ModelVersion) else read_card(a)
    cb = b.card if isinstance(b, ModelVersion) else read_card(b)
    sa, sb = ca.get("feature_stats", {}), cb.get("feature_stats", {})
    common = [f for f in sa if f in sb]
    rows = []
    for f in common:
        iqr = sa[f]["q75"] - sa[f]["q25"]
        denom = max(iqr, 1e-9 * abs(sa[f]["median"]) + 1e-6)
        rows.append((f, sa[f]["median"], sb[f]["median"], iqr, abs(sb[f]["median"] - sa[f]["median"]) / denom))
    drift = pd.DataFrame(rows, columns=["feature", "median_old", "median_new", "iqr_old", "shift"])
    drift = drift.sort_values("shift", ascending=False, kind="stable", ignore_index=True)

    def rows_of(card: dict[str, Any]) -> int | None:
        value = card.get("training", {}).get("rows")
        return None if value is None else int(value)

    return VersionComparison(
        old=str(ca.get("version")), new=str(cb.get("version")),
        threshold=(ca.get("threshold"), cb.get("threshold")),
        training_rows=(rows_of(ca), rows_of(cb)),
        features_added=sorted(set(sb) - set(sa)), features_removed=sorted(set(sa) - set(sb)),
        drift=drift,
    )
