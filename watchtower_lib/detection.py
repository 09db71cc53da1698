"""Phase 6 in one call: score a period of the store, record alerts and incidents, index them.

``watchtower detect`` and ``notebooks/06_detect.ipynb`` both call :func:`run`, so the command and
the scheduled notebook score the same rows the same way: conn joined with dns by ``uid`` (as the
models were trained), the newest model of each kind, the supervised card's calibrated threshold
unless the config sets one.

Why a connection is alerted once per kind: the scheduled pipeline retrains the Isolation Forest
(phase 5) before every detection, and alert ids include the model version (``alerts.alert_id``).
Without a check, each run would store the period's alerts again under the new version's ids. So
an alert whose ``(uid, kind)`` is already stored, from any model version, is not stored again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ._progress import Steps
from .config import Settings
from .errors import IntegrationError, MissingDependencyError, ModelError

log = logging.getLogger(__name__)

KINDS = ("supervised", "unsupervised")


@dataclass
class DetectionRun:
    """What one detection did; ``summary()`` is the line a notebook or the CLI prints."""

    connections: int
    model_versions: dict[str, str | None]
    alerts: pd.DataFrame  # every alert the models raised for the period (stored or already known)
    new_alerts: int
    already_alerted: int  # alerts dropped because an earlier model version alerted the same uid and kind
    incidents: pd.DataFrame  # incidents of the sources alerted in this run, regrouped over all their alerts
    new_incidents: int
    es: Any = None  # es.BulkReport of the pending alerts indexed, when Elasticsearch is configured
    es_error: str | None = None  # why alerts stayed pending in the alert store
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.connections:,} connections scored: {len(self.alerts):,} alerts "
                 f"({self.new_alerts:,} new), {self.new_incidents:,} new incidents"]
        if self.already_alerted:
            parts.append(f"{self.already_alerted:,} connections already alerted by an earlier model version")
        if self.es is not None and self.es.total:
            parts.append(f"elasticsearch: {self.es.total:,} alerts indexed ({self.es.created:,} new)")
        if self.es_error:
            parts.append(f"elasticsearch: {self.es_error}")
        return "; ".join(parts + self.notes)

    def es_status(self) -> str | dict[str, int]:
        """What indexing did: the counts, why alerts stayed pending, or that Elasticsearch is not configured."""
        if self.es_error:
            return self.es_error
        if self.es is None:
            return "not configured"
        return {"created": self.es.created, "existing": self.es.existing, "failed": self.es.failed}

    def figures(self) -> dict[str, Any]:
        """The phase-6 record (``runner.record_phase``): counts, alerts per kind, model versions, indexing."""
        by_kind = self.alerts["kind"].value_counts().to_dict() if "kind" in self.alerts else {}
        return {"rows": self.connections, "alerts": len(self.alerts), "new_alerts": self.new_alerts,
                "already_alerted": self.already_alerted, "alerts_by_kind": by_kind,
                "incidents": len(self.incidents), "new_incidents": self.new_incidents,
                "model_version": self.model_versions,
                "es_indexed": self.es.created if self.es is not None else None, "es_error": self.es_error}


def scoring_frame(settings: Settings, start: Any = None, end: Any = None) -> pd.DataFrame:
    """The conn rows of ``start <= ts < end`` with their dns query joined by uid, as in training."""
    from . import store
    from .features import join_logs

    conn = store.load(settings.store_dir, "conn", start=start, end=end)
    if len(conn) and "dns" in store.log_types(settings.store_dir):
        dns = store.load(settings.store_dir, "dns", start=start, end=end, columns=["uid", "query", "rcode_name"])
        conn = join_logs(conn, dns=dns)
    return conn


def latest_models(settings: Settings) -> dict[str, tuple[Any, dict[str, Any]] | None]:
    """The newest saved model of each kind as ``(pipeline, card)``, or None where none was trained.

    Raises
    ------
    ModelError
        A saved model is unsafe, stale or changed (``models.load``): better stop than score wrongly.
    """
    from . import models

    found: dict[str, tuple[Any, dict[str, Any]] | None] = {}
    for kind in KINDS:
        path = models.latest(settings.models_dir, kind)
        found[kind] = None if path is None else (models.load(path), models.read_card(path))
    return found


def run(settings: Settings, start: Any = None, end: Any = None, *, index: bool | None = None,
        progress: bool | None = False) -> DetectionRun:
    """Score ``start <= ts < end`` of the store (None: all of it) and record what the models flag.

    Alerts go to the alert store (a rerun adds nothing), incidents are regrouped over every stored
    alert of the sources alerted now (so an incident spans runs), and, when Elasticsearch is
    configured (or ``index=True``), every alert it lacks is indexed. Elasticsearch being down is
    not an error here: the alerts stay pending in the alert store, ``es_error`` says so, and the
    next run indexes them. ``progress``: a bar of the steps on stderr (None: when it is a terminal).

    Raises
    ------
    ModelError
        No model of either kind has been trained yet.
    """
    from . import alerts as alerts_mod
    from .alert_store import AlertStore

    indexing = settings.elasticsearch.enabled if index is None else index
    with Steps(5 + bool(indexing), "detect", progress) as steps:
        steps.start("loading models")
        found = latest_models(settings)
        if all(v is None for v in found.values()):
            raise ModelError(f"no trained model under {settings.models_dir}: run phases 4 and 5 "
                             f"(`watchtower train --supervised`, `watchtower train --unsupervised`) first")
        versions = {kind: (v[1].get("version") if v else None) for kind, v in found.items()}
        steps.start("reading conn (+ dns) from the store")
        conn = scoring_frame(settings, start, end)
        steps.start(f"scoring {len(conn):,} connections")
        raised = alerts_mod.detect(conn, found["supervised"], found["unsupervised"],
                                   supervised_threshold=settings.detection.supervised_threshold)
        steps.start(f"storing {len(raised):,} alerts")
        db = AlertStore(settings.alerts_db)
        fresh = _not_alerted_before(db, raised)
        added = db.upsert_alerts(fresh)
        steps.start("grouping incidents")
        incidents, created = alerts_mod.group_incidents(raised.iloc[:0]), 0
        if len(raised):
            stored = db.alerts()
            stored = stored[stored["src_ip"].isin(set(raised["src_ip"].dropna()))]
            incidents = alerts_mod.group_incidents(stored, settings.detection.incident_window_minutes)
            created = db.upsert_incidents(incidents)
        result = DetectionRun(len(conn), versions, raised, added, len(raised) - len(fresh), incidents, created)
        if indexing:
            steps.start("indexing alerts into Elasticsearch")
            result.es, result.es_error = index_pending_alerts(db, settings)
    log.info("%s", result.summary())
    return result


def _not_alerted_before(db: Any, raised: pd.DataFrame) -> pd.DataFrame:
    """``raised`` without the alerts whose (uid, kind) an earlier model version already stored."""
    if raised.empty:
        return raised
    span = db.alerts(raised["ts"].min() - pd.Timedelta(1, "s"), raised["ts"].max() + pd.Timedelta(1, "s"))
    if span.empty:
        return raised
    other = span[~span["id"].isin(set(raised["id"]))]
    seen = set(zip(other["uid"], other["kind"]))
    keep = [(u, k) not in seen for u, k in zip(raised["uid"], raised["kind"])]
    return raised[keep]


def index_pending_alerts(db: Any, settings: Settings) -> tuple[Any, str | None]:
    """Index every alert Elasticsearch lacks; ``(report, None)``, or ``(None, why)`` when it could not.

    On failure the alerts stay pending in the alert store and the next call indexes them.
    """
    from .alert_store import index_pending

    try:
        report = index_pending(db, settings=settings)
    except (IntegrationError, MissingDependencyError) as exc:
        why = (f"alerts not indexed into Elasticsearch ({exc}); {len(db.pending_es()):,} alerts stay pending in "
               f"{settings.alerts_db} and the next run indexes them")
        log.warning("%s", why)
        return None, why
    if report.failed:
        why = (f"Elasticsearch rejected {report.failed} of {report.total} alerts ({dict(report.errors)}); "
               f"they stay pending in {settings.alerts_db}")
        log.warning("%s", why)
        return report, why
    return report, None
