"""The tables of the weekly report, as plain DataFrames (``report`` re-exports them).

Why apart from the figures: each table is the data behind one figure, and a test
or a notebook can check or export it without plotly.
"""
from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: The week's figures, in the order the report shows them.
METRICS = ("connections", "bytes", "hosts", "alerts", "incidents")
SEVERITY_ORDER = ("critical", "high", "medium", "low")
ALERT_TABLE_COLUMNS = ["ts", "src_ip", "dst_ip", "dst_port", "service", "kind", "family", "score",
                       "severity", "explanation"]


def period_figures(
    conn: pd.DataFrame | None = None,
    alerts: pd.DataFrame | None = None,
    incidents: pd.DataFrame | None = None,
    *,
    internal_networks: Sequence[str] | None = None,
) -> dict[str, float]:
    """One period's headline figures: connections, bytes, hosts, alerts, incidents.

    ``hosts`` counts distinct originating addresses, only those inside
    ``internal_networks`` when given. A missing input counts as zero.
    """
    conn = conn if conn is not None else pd.DataFrame()
    figures: dict[str, float] = {"connections": float(len(conn)), "bytes": 0.0, "hosts": 0.0}
    for col in ("orig_bytes", "resp_bytes"):
        if col in conn:
            figures["bytes"] += float(pd.to_numeric(conn[col], errors="coerce").fillna(0).sum())
    if "id.orig_h" in conn:
        hosts = pd.Series(conn["id.orig_h"].dropna().unique()).astype(str)
        if internal_networks:
            nets = [ipaddress.ip_network(n, strict=False) for n in internal_networks]
            hosts = hosts[[_inside(h, nets) for h in hosts]]
        figures["hosts"] = float(len(hosts))
    figures["alerts"] = float(len(alerts)) if alerts is not None else 0.0
    figures["incidents"] = float(len(incidents)) if incidents is not None else 0.0
    return figures


def _inside(addr: str, nets: list) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in nets if net.version == ip.version)


def week_over_week(current: Mapping[str, float], previous: Mapping[str, float] | None) -> pd.DataFrame:
    """``metric, this_period, previous_period, change, change_pct`` for each of :data:`METRICS`.

    ``change_pct`` is NA where the previous value is zero or unknown (no baseline to compare).
    """
    previous = previous or {}
    rows = []
    for metric in METRICS:
        now = float(current.get(metric, 0) or 0)
        before = previous.get(metric)
        before = None if before is None else float(before)
        change = None if before is None else now - before
        pct = None if not before else 100.0 * (now - before) / before
        rows.append({"metric": metric, "this_period": now, "previous_period": before,
                     "change": change, "change_pct": pct})
    out = pd.DataFrame(rows)
    for col in ("this_period", "previous_period", "change"):  # all counts: whole numbers read better
        out[col] = out[col].astype("Float64").round().astype("Int64")
    out["change_pct"] = out["change_pct"].astype("Float64")
    return out


def top_alerted_hosts(alerts: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The hosts that raised most alerts (as source): counts per kind, worst severity, families."""
    cols = ["host", "alerts", "known", "unknown", "max_score", "max_severity", "families", "destinations"]
    if alerts is None or alerts.empty:
        return pd.DataFrame(columns=cols)
    work = alerts.assign(_rank=alerts["severity"].map({s: i for i, s in enumerate(SEVERITY_ORDER[::-1])}))
    grouped = work.groupby("src_ip")
    out = pd.DataFrame({
        "alerts": grouped.size(),
        "known": grouped["kind"].agg(lambda s: int((s == "known").sum())),
        "unknown": grouped["kind"].agg(lambda s: int((s == "unknown").sum())),
        "max_score": grouped["score"].max().astype(float),
        "_rank": grouped["_rank"].max(),
        "families": grouped["family"].agg(lambda s: ", ".join(sorted(set(s.dropna().astype(str))))),
        "destinations": grouped["dst_ip"].nunique(),
    })
    ranks = SEVERITY_ORDER[::-1]
    out["max_severity"] = [ranks[int(r)] if pd.notna(r) else None for r in out["_rank"]]
    out = out.rename_axis("host").reset_index()
    out = out.sort_values(["alerts", "max_score"], ascending=False, kind="stable").head(n)
    return out[cols].reset_index(drop=True)


def attack_families(alerts: pd.DataFrame) -> pd.DataFrame:
    """Known attack families this period: alerts, sources, destinations, first and last seen."""
    cols = ["family", "alerts", "sources", "destinations", "first_seen", "last_seen", "max_score"]
    known = _known(alerts)
    if known.empty:
        return pd.DataFrame(columns=cols)
    grouped = known.assign(ts=pd.to_datetime(known["ts"], utc=True)).groupby("family")
    out = grouped.agg(alerts=("ts", "size"), sources=("src_ip", "nunique"), destinations=("dst_ip", "nunique"),
                      first_seen=("ts", "min"), last_seen=("ts", "max"), max_score=("score", "max"))
    out = out.reset_index().sort_values(["alerts", "family"], ascending=[False, True], kind="stable")
    return out[cols].reset_index(drop=True)


def _known(alerts: pd.DataFrame | None) -> pd.DataFrame:
    if alerts is None or alerts.empty:
        return pd.DataFrame(columns=ALERT_TABLE_COLUMNS)
    known = alerts[alerts["kind"] == "known"]
    return known.assign(family=known["family"].astype("string").fillna("(unnamed)"))


def unknown_anomalies(alerts: pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """The ``n`` highest-scoring anomalies (``kind == "unknown"``) with their explanations."""
    if alerts is None or alerts.empty:
        return pd.DataFrame(columns=ALERT_TABLE_COLUMNS)
    unknown = alerts[alerts["kind"] == "unknown"]
    cols = [c for c in ALERT_TABLE_COLUMNS if c in unknown.columns]
    top = unknown.sort_values(["score", "ts"], ascending=[False, True], kind="stable").head(n)
    return top[cols].reset_index(drop=True)


def behaviour_changes(comparison: Any, n: int = 10) -> pd.DataFrame:
    """The hosts whose behaviour changed most (a ``behaviour.BehaviourComparison``), for the report."""
    if comparison is None:
        return pd.DataFrame(columns=["host", "change_score", "reasons"])
    return comparison.ranked(n)


def model_health(cards: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None, *,
                 now: Any = None) -> pd.DataFrame:
    """One row per model card: kind, version, when trained (and how long ago), on what, threshold, metrics.

    Cards are the dicts ``models`` writes as ``card.json``. Both flat keys (``trained_at``,
    ``training_files``, ``rows``) and the nested ``training`` section (``files`` as
    ``{path, sha256}``, ``rows``, ``start``/``end``) are read; ``saved_at`` stands in for a
    missing ``trained_at``; missing keys stay NA. Scalar metrics, also one level down
    (``pooled.f1``), become ``metric:<name>`` columns.
    """
    cols = ["kind", "version", "trained_at", "age_days", "training_files", "training_period", "rows",
            "threshold"]
    if isinstance(cards, Mapping):
        cards = [cards]
    if not cards:  # None, or no model trained yet
        return pd.DataFrame(columns=cols)
    now_ts = pd.Timestamp.now(tz="UTC") if now is None else _utc(now)
    rows = []
    for card in cards:
        nested = card.get("training")
        training: Mapping[str, Any] = nested if isinstance(nested, Mapping) else {}
        trained = card.get("trained_at") or card.get("saved_at")
        trained_ts = _utc(trained) if trained else None
        files = card.get("training_files") or training.get("files") or []
        if isinstance(files, (str, bytes, Mapping)):
            files = [files]
        names = [Path(str(f.get("path", "?") if isinstance(f, Mapping) else f)).name for f in files]
        period = (f"{training['start']} .. {training['end']}"
                  if training.get("start") and training.get("end") else None)
        row: dict[str, Any] = {
            "kind": card.get("kind"), "version": card.get("version"),
            "trained_at": trained_ts,
            "age_days": round((now_ts - trained_ts).total_seconds() / 86400, 1) if trained_ts is not None else None,
            "training_files": _shorten(names), "training_period": period,
            "rows": card.get("rows", training.get("rows")), "threshold": card.get("threshold"),
        }
        for name, value in _scalars(card.get("metrics") or {}):
            row[f"metric:{name}"] = value
        rows.append(row)
    out = pd.DataFrame(rows)
    return out[cols + [c for c in out.columns if c not in cols]]


def latest_cards(models_dir: str | Path, kinds: Sequence[str] = ("supervised", "unsupervised")) -> list[dict[str, Any]]:
    """The card of the newest saved model of each kind (kinds never trained are left out)."""
    from ._model_store import versions

    return [found[-1].card for kind in kinds if (found := versions(models_dir, kind))]


DRIFT_COLUMNS = ["feature", "median_old", "median_new", "iqr_old", "shift"]


@dataclass
class RetrainingChange:
    """A model version against the one before it (``models.compare_versions``), also when there is none.

    Phase 5 and the report's model health say the same thing the same way, and a first version
    is a sentence rather than a special case in each notebook.
    """

    version: str | None  # None: no model of this kind yet
    previous: str | None  # None: ``version`` is the first
    comparison: Any = None  # models.VersionComparison when both exist

    def summary(self) -> str:
        if self.comparison is not None:
            return str(self.comparison.summary())
        if self.version is None:
            return "no model of this kind has been trained yet"
        return f"{self.version} is the first version: nothing to compare with yet"

    @property
    def drift(self) -> pd.DataFrame:
        """Per feature the shift of the training median in IQRs, largest first (empty without a previous)."""
        return self.comparison.drift if self.comparison is not None else pd.DataFrame(columns=DRIFT_COLUMNS)

    @property
    def largest_shift(self) -> float | None:
        drift = self.drift
        return float(drift["shift"].max()) if len(drift) else None


def retraining_change(new: Any, previous: Sequence[Any] | None = None) -> RetrainingChange:
    """``new`` (a ``models.ModelVersion`` or None) against the last of ``previous`` (none: a first version)."""
    from ._model_store import compare_versions

    before = list(previous or [])[-1:]
    if new is None:
        return RetrainingChange(None, None)
    if not before:
        return RetrainingChange(new.version, None)
    return RetrainingChange(new.version, before[0].version, compare_versions(before[0], new))


def latest_retraining(models_dir: str | Path, kind: str = "unsupervised") -> RetrainingChange:
    """The newest saved version of ``kind`` against the one saved before it."""
    from ._model_store import versions

    found = versions(models_dir, kind)
    return retraining_change(found[-1] if found else None, found[:-1])


BASELINE_DRIFT_COLUMNS = ["model", "feature", "median_training", "q25_training", "q75_training", "median_period",
                          "unlike_training"]


def baseline_drift(models_dir: str | Path, conn: pd.DataFrame, n: int = 10,
                   kinds: Sequence[str] = ("unsupervised", "supervised")) -> pd.DataFrame:
    """The ``n`` features of each newest model on which this period's connections are most unlike its
    training data (``_model_drift.period_drift``: the share outside the training's middle half beyond
    what the training data has there): the behaviour the models have not seen. Empty when no model
    is trained or the period has no connections."""
    from ._model_drift import period_drift
    from ._model_store import load, versions

    parts = []
    for kind in kinds:
        found = versions(models_dir, kind)
        if not found or conn.empty:
            continue
        drift = period_drift(load(found[-1].path), found[-1].card, conn).head(n)
        parts.append(drift.assign(model=f"{kind} {found[-1].version}"))
    if not parts:
        return pd.DataFrame(columns=BASELINE_DRIFT_COLUMNS)
    return pd.concat(parts, ignore_index=True)[BASELINE_DRIFT_COLUMNS]


def hosts_changed(comparison: Any) -> int:
    """How many hosts' behaviour changed at all (change score above zero) in a ``BehaviourComparison``."""
    return 0 if comparison is None else int((comparison.hosts["change_score"] > 0).sum())


def phase_table(phases: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The report's "This run" table: per phase record (``runner.read_phases``) its time and main figures."""
    cols = ["phase", "seconds", "rows", "alerts", "model version"]
    rows = [{"phase": name, "seconds": rec.get("seconds"), "rows": rec.get("rows"), "alerts": rec.get("alerts"),
             "model version": rec.get("model_version")} for name, rec in phases.items()]
    return pd.DataFrame(rows, columns=cols)


def constant_columns(frame: pd.DataFrame) -> list[str]:
    """Columns that do not vary (standard deviation 0): they carry no signal and have no correlation."""
    spread = frame.std(numeric_only=True)
    return [str(c) for c in spread.index[spread == 0]]


def _shorten(names: list[str], keep: int = 5) -> str | None:
    if not names:
        return None
    more = f" (+{len(names) - keep} more)" if len(names) > keep else ""
    return ", ".join(names[:keep]) + more


def _scalars(metrics: Mapping[str, Any], prefix: str = "", depth: int = 1) -> list[tuple[str, float]]:
    """Numeric metrics as (name, value); nested mappings down to ``depth`` levels (``pooled.f1``)."""
    out = []
    for name, value in metrics.items():
        if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            out.append((f"{prefix}{name}", float(value)))
        elif isinstance(value, Mapping) and depth > 0:
            out.extend(_scalars(value, f"{prefix}{name}.", depth - 1))
    return out


def _utc(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
