"""The embedded alert store: one SQLite file (``Settings.alerts_db``) with alerts and incidents.

Why SQLite: it needs no service, a notebook can read it while the scheduler
writes (WAL journal: readers never block the writer and see committed data
only), and every write is one transaction, so a killed run leaves no half of it.

* ``alerts``: one row per alert id (``alerts.alert_id``). Upserting is idempotent:
  an id already stored is left as it is, so re-running detection adds nothing.
  ``es_indexed`` records whether Elasticsearch has the alert; ``pending_es()``
  returns those it does not, so a run after an outage catches up.
* ``incidents``: one row per incident with ``status`` (new / acknowledged / closed),
  first/last seen, count and max severity. Re-grouping updates the figures and keeps
  the status an analyst set; an incident that was closed and gets new alerts goes
  back to ``new``.
* ``incident_events``: every status change with its note, for the audit trail.

Times are stored as ISO-8601 UTC text of fixed width (``2026-01-02T03:04:05.000006Z``),
so they sort and compare as text and read well in the sqlite3 shell.
"""
from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from .alerts import ALERT_COLUMNS, SEVERITIES, SEVERITY_RANK
from .errors import StoreError

log = logging.getLogger(__name__)

STATUSES = ("new", "acknowledged", "closed")
_TS = "%Y-%m-%dT%H:%M:%S.%fZ"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, uid TEXT, kind TEXT NOT NULL, ts TEXT NOT NULL, sensor TEXT,
    src_ip TEXT, src_port INTEGER, dst_ip TEXT, dst_port INTEGER, proto TEXT, service TEXT,
    family TEXT, score REAL NOT NULL, severity TEXT NOT NULL, explanation TEXT, explanation_json TEXT,
    model_version TEXT, incident_id TEXT, es_indexed INTEGER NOT NULL DEFAULT 0, stored_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts);
CREATE INDEX IF NOT EXISTS alerts_incident ON alerts (incident_id);
CREATE INDEX IF NOT EXISTS alerts_pending_es ON alerts (es_indexed) WHERE es_indexed = 0;
CREATE TABLE IF NOT EXISTS incidents (
    incident_id TEXT PRIMARY KEY, kind TEXT NOT NULL, src_ip TEXT, dst_ip TEXT, scope TEXT, family TEXT,
    first_seen TEXT NOT NULL, last_seen TEXT NOT NULL, count INTEGER NOT NULL,
    n_destinations INTEGER, n_ports INTEGER, max_score REAL, max_severity TEXT NOT NULL, sensors TEXT,
    status TEXT NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'acknowledged', 'closed')),
    note TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_status ON incidents (status);
CREATE TABLE IF NOT EXISTS incident_events (
    incident_id TEXT NOT NULL, at TEXT NOT NULL, status TEXT NOT NULL, note TEXT
);
"""
_INCIDENT_FIELDS = ["incident_id", "kind", "src_ip", "dst_ip", "scope", "family", "first_seen", "last_seen",
                    "count", "n_destinations", "n_ports", "max_score", "max_severity", "sensors"]


class AlertStore:
    """Alerts and incidents in one SQLite file; every method opens its own short connection.

    Parameters
    ----------
    path : the SQLite file (created with its folder if missing).
    timeout : seconds to wait for another writer's lock before failing with ``StoreError``.
    """

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        try:  # executescript runs its own transaction; IF NOT EXISTS makes it safe to repeat
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot create the alert tables ({exc})") from exc
        finally:
            db.close()

    def __repr__(self) -> str:
        return f"AlertStore({str(self.path)!r})"

    # -- writes ---------------------------------------------------------------------------------

    def upsert_alerts(self, alerts: pd.DataFrame) -> int:
        """Store alerts whose id is not stored yet; return how many were new (0 on a rerun)."""
        if alerts.empty:
            return 0
        missing = [c for c in ALERT_COLUMNS if c not in alerts]
        if missing:
            raise StoreError(f"{self.path}: alerts lack columns {missing}; pass alerts.detect() output")
        now = _now()
        columns = [_iso_column(alerts[c]) if c == "ts" else _column(alerts[c]) for c in ALERT_COLUMNS]
        rows = [(*row, now) for row in zip(*columns)]
        cols = ", ".join(ALERT_COLUMNS)
        with self._write() as db:
            before = db.total_changes
            db.executemany(f"INSERT OR IGNORE INTO alerts ({cols}, stored_at) "
                           f"VALUES ({', '.join('?' * (len(ALERT_COLUMNS) + 1))})", rows)
            added = db.total_changes - before
        log.info("%s: %d new alerts of %d", self.path.name, added, len(alerts))
        return added

    def upsert_incidents(self, incidents: pd.DataFrame) -> int:
        """Insert or update incidents (``alerts.group_incidents`` output); link their alerts.

        An existing incident keeps its status and note; one that was ``closed`` and now
        counts more alerts goes back to ``new``. Returns the number of incidents created.
        """
        if incidents.empty:
            return 0
        now = _now()
        created = 0
        with self._write() as db:
            for inc in incidents.to_dict("records"):
                values = {f: (_iso(inc[f]) if f in ("first_seen", "last_seen") else _sql(inc.get(f)))
                          for f in _INCIDENT_FIELDS}
                old = db.execute("SELECT status, count, last_seen FROM incidents WHERE incident_id = ?",
                                 (values["incident_id"],)).fetchone()
                if old is None:
                    db.execute(f"INSERT INTO incidents ({', '.join(_INCIDENT_FIELDS)}, created_at, updated_at) "
                               f"VALUES ({', '.join('?' * (len(_INCIDENT_FIELDS) + 2))})",
                               [*values.values(), now, now])
                    db.execute("INSERT INTO incident_events VALUES (?, ?, 'new', NULL)", (values["incident_id"], now))
                    created += 1
                elif (values["count"], values["last_seen"]) != (old[1], old[2]):
                    sets = ", ".join(f"{f} = ?" for f in _INCIDENT_FIELDS[1:])
                    db.execute(f"UPDATE incidents SET {sets}, updated_at = ? WHERE incident_id = ?",
                               [*(values[f] for f in _INCIDENT_FIELDS[1:]), now, values["incident_id"]])
                    if old[0] == "closed" and values["count"] > old[1]:
                        note = f"reopened: {values['count'] - old[1]} new alerts"
                        db.execute("UPDATE incidents SET status = 'new', note = ? WHERE incident_id = ?",
                                   (note, values["incident_id"]))
                        db.execute("INSERT INTO incident_events VALUES (?, ?, 'new', ?)",
                                   (values["incident_id"], now, note))
                ids = inc.get("alert_ids")
                if ids is not None and len(ids):
                    db.executemany("UPDATE alerts SET incident_id = ? WHERE id = ?",
                                   [(values["incident_id"], a) for a in ids])
            if "alert_ids" in incidents:  # regrouped: drop incidents left without alerts, never touched
                db.execute("DELETE FROM incidents WHERE status = 'new' AND note IS NULL AND incident_id NOT IN "
                           "(SELECT DISTINCT incident_id FROM alerts WHERE incident_id IS NOT NULL)")
        return created

    def set_status(self, incident_id: str, status: str, note: str | None = None) -> str:
        """Set an incident's status (new / acknowledged / closed) with an optional note.

        ``incident_id`` may be a unique prefix (as shown by ``watchtower alerts list``).
        Returns the full incident id. Raises ``StoreError`` for an unknown id or status.
        """
        if status not in STATUSES:
            raise StoreError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        with self._write() as db:
            found = [r[0] for r in db.execute(
                "SELECT incident_id FROM incidents WHERE incident_id LIKE ? ESCAPE '\\' LIMIT 2",
                (_like_prefix(incident_id),))]
            if len(found) != 1:
                what = "no incident" if not found else "more than one incident"
                raise StoreError(f"{self.path}: {what} matches {incident_id!r} "
                                 f"(see `watchtower alerts list` for ids)")
            now = _now()
            db.execute("UPDATE incidents SET status = ?, note = COALESCE(?, note), updated_at = ? "
                       "WHERE incident_id = ?", (status, note, now, found[0]))
            db.execute("INSERT INTO incident_events VALUES (?, ?, ?, ?)", (found[0], now, status, note))
        log.info("incident %s -> %s", found[0], status)
        return found[0]

    def mark_es_indexed(self, ids: Iterable[str]) -> int:
        """Record that Elasticsearch now holds these alerts."""
        ids = list(ids)
        with self._write() as db:
            before = db.total_changes
            db.executemany("UPDATE alerts SET es_indexed = 1 WHERE id = ?", [(i,) for i in ids])
            return db.total_changes - before

    # -- reads ----------------------------------------------------------------------------------

    def alerts(self, start: Any = None, end: Any = None, kind: str | None = None,
               min_score: float | None = None, *, incident_id: str | None = None) -> pd.DataFrame:
        """Alerts with ``start <= ts < end`` (ISO text or datetimes), of ``kind``, from ``min_score``."""
        conditions = [("ts >= ?", None if start is None else _iso(start)),
                      ("ts < ?", None if end is None else _iso(end)),
                      ("kind = ?", kind),
                      ("score >= ?", None if min_score is None else float(min_score)),
                      ("incident_id = ?", incident_id)]
        where = [sql for sql, value in conditions if value is not None]
        args: list[Any] = [value for _, value in conditions if value is not None]
        sql = "SELECT * FROM alerts" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY ts, kind, uid"
        return _alerts_frame(self._query(sql, args))

    def pending_es(self) -> pd.DataFrame:
        """Alerts not yet in Elasticsearch (``es_indexed = 0``), oldest first."""
        return _alerts_frame(self._query("SELECT * FROM alerts WHERE es_indexed = 0 ORDER BY ts, kind, uid", []))

    def incidents(self, status: str | None = None, start: Any = None, end: Any = None) -> pd.DataFrame:
        """Incidents (optionally of one status), most severe and most recent first.

        With ``start``/``end`` (ISO text or datetimes), only the incidents that overlap
        ``[start, end)``: last seen at or after ``start`` and first seen before ``end``. An
        incident spanning two report weeks belongs to both, as the analyst sees it in both.
        """
        if status is not None and status not in STATUSES:
            raise StoreError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        conditions = [("status = ?", status), ("last_seen >= ?", None if start is None else _iso(start)),
                      ("first_seen < ?", None if end is None else _iso(end))]
        where = [sql for sql, value in conditions if value is not None]
        args: list[Any] = [value for _, value in conditions if value is not None]
        sql = "SELECT * FROM incidents" + (" WHERE " + " AND ".join(where) if where else "")
        frame = self._query(sql, args)
        for col in ("first_seen", "last_seen", "created_at", "updated_at"):
            frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")
        frame["_rank"] = frame["max_severity"].map(SEVERITY_RANK)
        frame = frame.sort_values(["_rank", "last_seen"], ascending=False, ignore_index=True)
        return frame.drop(columns="_rank")

    def events(self, incident_id: str | None = None) -> pd.DataFrame:
        """The status history (audit trail) of one or all incidents."""
        sql = "SELECT * FROM incident_events" + (" WHERE incident_id = ?" if incident_id else "") + " ORDER BY at"
        return self._query(sql, [incident_id] if incident_id else [])

    # -- plumbing -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the alert store ({exc})") from exc
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")  # take the write lock now, not half-way through
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: write failed ({exc}); nothing of this write was kept") from exc
        finally:
            db.close()

    def _query(self, sql: str, args: list[Any]) -> pd.DataFrame:
        db = self._connect()
        try:
            return pd.read_sql_query(sql, db, params=args)
        except (sqlite3.Error, pd.errors.DatabaseError) as exc:
            raise StoreError(f"{self.path}: read failed ({exc})") from exc
        finally:
            db.close()


def index_pending(store: AlertStore, *, settings: Any, es: Any = None) -> Any:
    """Index every alert Elasticsearch lacks (``pending_es``) and mark those indexed.

    The catch-up after an outage: alerts stored while the node was down are
    sent by the next call. ``_id`` is the alert id, so a document indexed twice
    is counted as existing, not duplicated.

    Returns
    -------
    ``es.BulkReport`` (empty when nothing was pending). Alerts are marked indexed
    only when the bulk load rejected none.

    Raises
    ------
    IntegrationError
        The node is unreachable or refused the request; nothing is marked.
    MissingDependencyError
        The ``elasticsearch`` client is not installed (extra ``es``).
    """
    from . import es as es_mod

    pending = store.pending_es()
    if pending.empty:
        return es_mod.BulkReport()
    frame = pending.drop(columns=["es_indexed", "stored_at"])
    report = es_mod.index_alerts(frame, es=es, settings=settings)
    if report.failed:
        log.warning("Elasticsearch rejected %d of %d alerts (%s); all stay pending", report.failed,
                    len(pending), dict(report.errors))
    else:
        store.mark_es_indexed(pending["id"])
    return report


def severity_at_least(severities: pd.Series, minimum: str) -> pd.Series:
    """Boolean mask: severity is ``minimum`` or above (order: low < medium < high < critical)."""
    if minimum not in SEVERITY_RANK:
        raise StoreError(f"severity must be one of {', '.join(SEVERITIES)}, got {minimum!r}")
    return severities.map(SEVERITY_RANK).fillna(-1) >= SEVERITY_RANK[minimum]


def _alerts_frame(frame: pd.DataFrame) -> pd.DataFrame:
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    for col in ("src_port", "dst_port"):
        frame[col] = frame[col].astype("Int64")
    frame["es_indexed"] = frame["es_indexed"].astype(bool)
    return frame


def _column(values: pd.Series) -> list[Any]:
    """Plain Python values for SQLite, NA as None (vectorised: upserts run at 10^5 rows/s)."""
    if pd.api.types.is_float_dtype(values.dtype) and not isinstance(values.dtype, pd.api.extensions.ExtensionDtype):
        return [None if v != v else v for v in values.tolist()]
    return values.astype(object).where(values.notna(), None).tolist()


def _iso_column(values: pd.Series) -> list[str]:
    ts = pd.to_datetime(values, utc=True)
    return ts.dt.strftime(_TS).tolist()


def _now() -> str:
    return datetime.now(timezone.utc).strftime(_TS)


def _iso(value: Any) -> str:
    """Any timestamp (datetime, pandas Timestamp, ISO text) as fixed-width UTC text."""
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.strftime(_TS)


def _sql(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
