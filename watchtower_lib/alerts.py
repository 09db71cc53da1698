"""Scored, explained alerts from the two models, and incidents grouped from them.

Why two kinds: the Random Forest (``kind="known"``) recognises attacks it was
trained on and can name their family; the Isolation Forest (``kind="unknown"``)
flags what does not look like the learned baseline, with no family. An analyst
triages both, so both end up in one table with one schema.

Severity rule (also in ``docs/alerts.md``), from the kind and the score:

* ``known`` (score = probability of malicious): ``critical`` from 0.95,
  ``high`` from 0.80, ``medium`` from 0.60, else ``low``.
* ``unknown`` (score = anomaly score 0..1, alerting above the calibrated
  threshold ``t``): the margin ``m = (score - t) / (1 - t)``; ``high`` from
  m = 0.5, ``medium`` from 0.2, else ``low``. An anomaly alone is never
  ``critical``: nothing confirms it is an attack until an analyst looks.

Ids are deterministic, so re-running detection over the same logs with the
same models gives the same alerts and the alert store adds nothing:
``id = sha256(model_version | uid | kind)``.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .errors import ModelError

log = logging.getLogger(__name__)

SEVERITIES = ("low", "medium", "high", "critical")  # ascending
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}

ALERT_COLUMNS = [
    "id", "ts", "sensor", "src_ip", "src_port", "dst_ip", "dst_port", "proto", "service",
    "kind", "family", "score", "severity", "explanation", "explanation_json", "uid", "model_version",
]
INCIDENT_COLUMNS = [
    "incident_id", "kind", "src_ip", "dst_ip", "scope", "family", "first_seen", "last_seen", "count",
    "n_destinations", "n_ports", "max_score", "max_severity", "sensors", "alert_ids",
]
_ZEEK = {"src_ip": "id.orig_h", "src_port": "id.orig_p", "dst_ip": "id.resp_h", "dst_port": "id.resp_p"}


def detect(
    conn_df: pd.DataFrame,
    supervised: Any,
    unsupervised: Any,
    *,
    supervised_threshold: float | None = 0.5,
    anomaly_threshold: float | None = None,
    sensor_column: str = "_sensor",
    explain_top: int = 3,
) -> pd.DataFrame:
    """Score every connection with both models; return one row per alert.

    Parameters
    ----------
    conn_df : a parsed Zeek conn log (``zeek.read_log`` / ``store.load`` columns).
    supervised, unsupervised : fitted pipelines from ``models`` (or ``(model, card)``
        pairs, or models carrying a ``card_`` dict). Either may be None: then only
        the other kind of alert is produced. The card's ``version`` goes into the id.
    supervised_threshold : probability of malicious from which the forest alerts; None takes
        the supervised card's ``threshold`` (``models.train_supervised`` calibrates it to a 1%
        false-positive rate on held-out captures).
    anomaly_threshold : anomaly score (0..1) from which the isolation forest alerts;
        None takes the calibrated ``threshold`` of the unsupervised model card.
    sensor_column : column naming the sensor, if present (else ``sensor`` is NA).
    explain_top : how many features each explanation names.

    Returns
    -------
    DataFrame with ``ALERT_COLUMNS``, sorted by ``ts``, ``kind``, ``uid``. A connection
    flagged by both models gives two alerts (one per kind). Explanations are computed
    only for alerting rows, so the cost of explaining scales with alerts, not traffic.

    Raises
    ------
    ModelError
        A threshold is None and the model's card has none.
    """
    from . import models  # deferred: scikit-learn loads only when detecting

    sup, sup_card = _unwrap(supervised)
    uns, uns_card = _unwrap(unsupervised)
    frames = []
    # features once per distinct feature setting: they cost more than both forests together
    sup_X = models.features_of(sup, conn_df) if sup is not None and len(conn_df) else None
    uns_X = None
    if uns is not None and len(conn_df):
        shared = sup_X is not None and models.same_features(sup, uns)
        uns_X = sup_X if shared else models.features_of(uns, conn_df)
    if sup is not None and sup_X is not None:
        if supervised_threshold is None:
            supervised_threshold = sup_card.get("threshold")
            if supervised_threshold is None:
                raise ModelError("the supervised model card has no 'threshold'; pass supervised_threshold=")
        supervised_threshold = float(supervised_threshold)
        proba = models.score_features(sup, sup_X)
        rows = np.flatnonzero(proba >= supervised_threshold)
        family = _family(models, sup, conn_df, rows, sup_X)
        frames.append(_build(conn_df, rows, proba[rows], "known", family, _version(sup, sup_card),
                             models, sup, sensor_column, explain_top, supervised_threshold, sup_X))
        log.info("supervised: %d of %d connections at P(malicious) >= %.2f", len(rows), len(conn_df),
                 supervised_threshold)
    if uns is not None and uns_X is not None:
        threshold = anomaly_threshold if anomaly_threshold is not None else uns_card.get("threshold")
        if threshold is None:
            raise ModelError("the unsupervised model card has no calibrated 'threshold'; pass "
                             "anomaly_threshold= or retrain with models.retrain_unsupervised")
        score = np.asarray(models.score_features(uns, uns_X), dtype=float)
        rows = np.flatnonzero(score >= float(threshold))
        family = pd.array([pd.NA] * len(rows), dtype="string")
        frames.append(_build(conn_df, rows, score[rows], "unknown", family, _version(uns, uns_card),
                             models, uns, sensor_column, explain_top, float(threshold), uns_X))
        log.info("unsupervised: %d of %d connections at anomaly score >= %.3f", len(rows), len(conn_df),
                 float(threshold))
    if not frames:
        return _empty_alerts()
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["ts", "kind", "uid"], kind="stable", ignore_index=True)


def severity(kind: str, score: Any, threshold: float = 0.5) -> np.ndarray:
    """The documented severity rule (see the module docstring), vectorised over ``score``."""
    score = np.asarray(score, dtype=float)
    names: tuple[str, ...]
    if kind == "known":
        cuts, names = [0.60, 0.80, 0.95], SEVERITIES
    elif kind == "unknown":
        span = max(1.0 - float(threshold), 1e-9)
        score = np.clip((score - float(threshold)) / span, 0.0, 1.0)
        cuts, names = [0.2, 0.5], SEVERITIES[:3]
    else:
        raise ValueError(f"kind must be 'known' or 'unknown', got {kind!r}")
    return np.asarray(names, dtype=object)[np.searchsorted(cuts, score, side="right")]


def alert_id(model_version: str, uid: str, kind: str) -> str:
    """Deterministic alert id: the same model, connection and kind always give the same id."""
    return hashlib.sha256(f"{model_version}|{uid}|{kind}".encode()).hexdigest()[:32]


def incident_ids(alerts: pd.DataFrame, window_minutes: float = 60, *, fan_out: int | None = 10) -> pd.Series:
    """The incident each alert belongs to (aligned with ``alerts.index``).

    Grouping, in two steps:

    1. Alerts of one source and kind form a *session* while each follows the previous
       one within ``window_minutes`` (a gap longer than the window starts a new one).
    2. A session that reaches ``fan_out`` or more distinct destinations (a horizontal
       scan, a worm, a DDoS bot) is one incident, destination ``*`` (scope ``fan-out``).
       Any other session is split by destination and each (source, destination, kind)
       is sessionised again the same way (scope ``pair``). A vertical scan (many ports,
       one host) is a pair incident already. ``fan_out=None`` turns step 2 off.

    Consequence worth knowing: in a fan-out session, alerts of that source and kind
    toward a single other destination (say a C&C server) are folded into the scan
    incident; its alerts keep their own rows, so drilling down shows them.

    The id is ``sha256(kind | source | destination or * | first ts | first uid)``: stable
    across model versions and reruns, as long as earlier alerts of the incident exist.
    """
    return _assign(alerts, window_minutes, fan_out)["incident_id"]


def _assign(alerts: pd.DataFrame, window_minutes: float, fan_out: int | None) -> pd.DataFrame:
    """Per alert: ``incident_id`` and ``fan_out`` (whether its incident is a fan-out one)."""
    if alerts.empty:
        return pd.DataFrame({"incident_id": pd.Series([], dtype="string"), "fan_out": pd.Series([], dtype=bool)},
                            index=alerts.index)
    window = pd.Timedelta(minutes=float(window_minutes))
    frame = pd.DataFrame({
        "src": alerts["src_ip"].astype("string").fillna("?"),
        "dst": alerts["dst_ip"].astype("string").fillna("?"),
        "kind": alerts["kind"].astype("string"),
        "ts": pd.to_datetime(alerts["ts"], utc=True),
        "uid": alerts["uid"].astype("string").fillna(""),
    }, index=alerts.index)
    frame["session"] = _sessions(frame, ["src", "kind"], window)
    if fan_out is not None:
        wide = frame.groupby("session")["dst"].transform("nunique") >= fan_out
    else:
        wide = pd.Series(False, index=frame.index)
    frame["scope_dst"] = frame["dst"].where(~wide, "*")
    frame["group"] = _sessions(frame, ["src", "kind", "scope_dst"], window)
    ordered = frame.sort_values(["ts", "uid"], kind="stable")
    first = ordered.groupby("group", sort=False).head(1).set_index("group")
    keys = (first["kind"] + "|" + first["src"] + "|" + first["scope_dst"] + "|"
            + first["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ") + "|" + first["uid"])
    ids = {g: "inc-" + hashlib.sha256(k.encode()).hexdigest()[:24] for g, k in keys.items()}
    return pd.DataFrame({"incident_id": frame["group"].map(ids).astype("string"), "fan_out": wide.to_numpy()},
                        index=frame.index)


def group_incidents(alerts: pd.DataFrame, window_minutes: float = 60, *, fan_out: int | None = 10) -> pd.DataFrame:
    """Group alerts into incidents (rule in :func:`incident_ids`): a scan is one incident.

    Returns
    -------
    DataFrame with ``INCIDENT_COLUMNS``: first/last seen, alert count, distinct
    destinations and ports, the highest score and severity, the sensors, the most
    frequent family (NA for ``unknown``) and ``alert_ids`` (list of alert ids).
    """
    if alerts.empty:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in INCIDENT_COLUMNS})
    assigned = _assign(alerts, window_minutes, fan_out)
    work = alerts.assign(incident_id=assigned["incident_id"], _fan_out=assigned["fan_out"],
                         ts=pd.to_datetime(alerts["ts"], utc=True),
                         _rank=alerts["severity"].map(SEVERITY_RANK))
    grouped = work.sort_values(["ts", "uid"], kind="stable").groupby("incident_id", sort=False)
    out = grouped.agg(
        kind=("kind", "first"), src_ip=("src_ip", "first"), first_seen=("ts", "min"),
        last_seen=("ts", "max"), count=("id", "size"), n_destinations=("dst_ip", "nunique"),
        n_ports=("dst_port", "nunique"), max_score=("score", "max"), _rank=("_rank", "max"),
        dst_first=("dst_ip", "first"), _fan_out=("_fan_out", "first"),
    )
    out["scope"] = np.where(out["_fan_out"], "fan-out", "pair")
    out["dst_ip"] = out["dst_first"].where(out["scope"] == "pair", "*")
    out["max_severity"] = [SEVERITIES[int(r)] for r in out["_rank"]]
    out["family"] = grouped["family"].agg(_mode).astype("string")
    out["sensors"] = grouped["sensor"].agg(lambda s: ",".join(sorted(set(s.dropna().astype(str)))))
    out["alert_ids"] = grouped["id"].agg(list)
    out = out.reset_index()[INCIDENT_COLUMNS]
    return out.sort_values(["first_seen", "incident_id"], ignore_index=True)


# -- internals ---------------------------------------------------------------------------------


def _sessions(frame: pd.DataFrame, keys: list[str], window: pd.Timedelta) -> pd.Series:
    """Number rows into sessions: same ``keys``, each within ``window`` of the previous row."""
    ordered = frame.sort_values([*keys, "ts", "uid"], kind="stable")
    same = np.ones(len(ordered), dtype=bool)
    for key in keys:
        col = ordered[key].to_numpy()
        same[1:] &= col[1:] == col[:-1]
    same[0] = False
    gap = ordered["ts"].diff().to_numpy()
    close = np.zeros(len(ordered), dtype=bool)
    close[1:] = gap[1:] <= window.to_timedelta64()
    start = ~(same & close)
    return pd.Series(np.cumsum(start), index=ordered.index).reindex(frame.index)


def _mode(values: pd.Series) -> Any:
    values = values.dropna()
    return values.value_counts().index[0] if len(values) else pd.NA


def _unwrap(obj: Any) -> tuple[Any, Mapping[str, Any]]:
    """Accept a model, a ``(model, card)`` pair, or a model with a ``card_`` dict."""
    if obj is None:
        return None, {}
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], Mapping):
        return obj[0], obj[1]
    card = getattr(obj, "card_", None)
    return obj, card if isinstance(card, Mapping) else {}


def _version(model: Any, card: Mapping[str, Any]) -> str:
    """The card's version; without a card, a digest of the model's parameters (stable for one model)."""
    if card.get("version"):
        return str(card["version"])
    digest = hashlib.sha256(repr(model).encode()).hexdigest()[:12]
    log.warning("model %s has no card version; using parameter digest %s", type(model).__name__, digest)
    return f"adhoc-{digest}"


def _call_rows(func: Any, model: Any, conn_df: pd.DataFrame, rows: np.ndarray, features: Any = None,
               **kw: Any) -> Any:
    """Call ``func`` for the alerting rows only, keeping host context when ``func`` supports ``rows=``
    (and reusing the frame's feature matrix when it takes ``features=``)."""
    params = inspect.signature(func).parameters
    if "rows" in params:
        if features is not None and "features" in params:
            kw["features"] = features
        return func(model, conn_df, rows=rows, **kw)
    return func(model, conn_df.iloc[rows], **kw)


def _family(models: Any, model: Any, conn_df: pd.DataFrame, rows: np.ndarray, features: Any = None) -> pd.Series:
    if not len(rows):
        return pd.Series([], dtype="string")
    try:
        family = _call_rows(models.predict_family, model, conn_df, rows, features)
    except ModelError as exc:  # a forest trained without family labels
        log.info("no attack family: %s", exc)
        return pd.Series([pd.NA] * len(rows), dtype="string")
    return pd.Series(pd.array(list(family), dtype="string"))


def _build(conn_df: pd.DataFrame, rows: np.ndarray, score: np.ndarray, kind: str, family: Any,
           version: str, models: Any, model: Any, sensor_column: str, top: int,
           threshold: float, features: Any = None) -> pd.DataFrame:
    if not len(rows):
        return _empty_alerts()
    sub = conn_df.iloc[rows]
    uid = sub["uid"].astype("string").fillna("").to_numpy(dtype=object)
    try:
        explained = _call_rows(models.explain, model, conn_df, rows, features, top=top)
    except ModelError as exc:  # a pipeline without a baseline: the alerts matter more than their why
        log.warning("%s alerts without explanations: %s", kind, exc)
        explained = [[] for _ in rows]
    out = pd.DataFrame({
        "id": [alert_id(version, u, kind) for u in uid],
        "ts": _as_utc(sub["ts"]).to_numpy(),
        "sensor": sub[sensor_column].astype("string").to_numpy() if sensor_column in sub
        else pd.array([pd.NA] * len(sub), dtype="string"),
        **{ours: sub[zeek].to_numpy() if zeek in sub else pd.NA for ours, zeek in _ZEEK.items()},
        "proto": sub["proto"].to_numpy() if "proto" in sub else pd.NA,
        "service": sub["service"].to_numpy() if "service" in sub else pd.NA,
        "kind": kind,
        "family": pd.array(list(family), dtype="string"),
        "score": score.astype(float),
        "severity": severity(kind, score, threshold),
        "explanation": [_explain_text(e) for e in explained],
        "explanation_json": [json.dumps(_jsonable(e), sort_keys=True) for e in explained],
        "uid": pd.array(uid, dtype="string"),
        "model_version": version,
    })
    return _typed(out)


def _explain_text(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no explanation (the model keeps no feature baseline)"
    parts = []
    for item in items:
        effect = float(item.get("effect", 0.0))
        parts.append(f"{item['feature']}={_fmt(item.get('value'))} (baseline median "
                     f"{_fmt(item.get('baseline_median'))}, {'+' if effect >= 0 else ''}{effect:.3f})")
    return "; ".join(parts)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return "NA"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def _jsonable(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def conv(v: Any) -> Any:
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            return None
        if isinstance(v, np.generic):
            return v.item()
        return v if isinstance(v, (int, float, str, bool)) else str(v)
    return [{k: conv(v) for k, v in item.items()} for item in items]


def _as_utc(ts: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(ts):
        return pd.to_datetime(ts.astype(float), unit="s", utc=True)
    return pd.to_datetime(ts, utc=True)


def _typed(out: pd.DataFrame) -> pd.DataFrame:
    out["ts"] = pd.to_datetime(out["ts"], utc=True).astype("datetime64[ns, UTC]")
    for col in ("src_port", "dst_port"):
        out[col] = pd.array(out[col], dtype="Int64") if len(out) else pd.array([], dtype="Int64")
    for col in ("id", "sensor", "src_ip", "dst_ip", "proto", "service", "kind", "family", "severity",
                "explanation", "explanation_json", "uid", "model_version"):
        out[col] = out[col].astype("string")
    out["score"] = out["score"].astype(float)
    return out[ALERT_COLUMNS]


def _empty_alerts() -> pd.DataFrame:
    empty = pd.DataFrame({c: pd.Series([], dtype="object") for c in ALERT_COLUMNS})
    return _typed(empty)
