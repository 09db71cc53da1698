"""Tell someone about new incidents: a webhook (HTTP POST of JSON) and email (SMTP), both optional.

Why digests: each channel sends at most one message per ``min_interval_seconds``,
and that message carries *every* eligible incident not notified before. So a
scan that produces incidents in a burst gives one post, and an incident held
back by the rate limit is not lost: the next run after the interval sends it.

Per channel, an incident is eligible when its ``max_severity`` is at least the
channel's ``min_severity`` and the channel has not notified it before. What was
sent and when lives in ``state_db`` (SQLite; it can be the alert store's file),
so a scheduled rerun respects the rate limit and never notifies twice.

A failed send (server down, HTTP error, SMTP refusal) is reported, logged and
not recorded as sent, so the next run retries it; it does not stop the other
channel. Passwords come from the environment variable the config names and
are never logged.
"""
from __future__ import annotations

import contextlib
import json
import logging
import smtplib
import sqlite3
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pandas as pd

from .alerts import SEVERITIES, SEVERITY_RANK
from .config import EmailConfig, NotificationsConfig, Settings, WebhookConfig
from .errors import ConfigError, StoreError

log = logging.getLogger(__name__)

_TS = "%Y-%m-%dT%H:%M:%S.%fZ"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS notify_channels (channel TEXT PRIMARY KEY, last_sent_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS notify_sent (
    channel TEXT NOT NULL, incident_id TEXT NOT NULL, sent_at TEXT NOT NULL,
    PRIMARY KEY (channel, incident_id)
);
"""
_FIELDS = ["incident_id", "kind", "src_ip", "dst_ip", "scope", "family", "first_seen", "last_seen", "count",
           "n_destinations", "n_ports", "max_score", "max_severity", "sensors", "status"]


@dataclass
class ChannelReport:
    """What one channel did in one call."""

    channel: str
    sent: list[str] = field(default_factory=list)  # incident ids delivered now
    deferred: list[str] = field(default_factory=list)  # eligible, held back by the rate limit
    next_allowed_at: datetime | None = None  # when deferred ones can go
    below_severity: int = 0
    already_notified: int = 0
    error: str | None = None  # why the send failed (eligible ones stay pending)


@dataclass
class NotifyReport:
    """One ``ChannelReport`` per configured channel; ``ok`` is False when a send failed."""

    channels: list[ChannelReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.error is None for c in self.channels)

    @property
    def sent(self) -> int:
        return sum(len(c.sent) for c in self.channels)

    def summary(self) -> str:
        parts = []
        for c in self.channels:
            text = f"{c.channel}: {len(c.sent)} sent"
            if c.deferred:
                text += f", {len(c.deferred)} deferred until {c.next_allowed_at:%H:%M:%S}Z"
            if c.error:
                text += f", FAILED ({c.error})"
            parts.append(text)
        return "; ".join(parts) or "no notification channel configured"


def notify(incidents: pd.DataFrame, config: NotificationsConfig, state_db: str | Path, *,
           now: datetime | None = None) -> NotifyReport:
    """Send each configured channel a digest of the incidents it has not notified yet.

    Parameters
    ----------
    incidents : ``AlertStore.incidents()`` or ``alerts.group_incidents`` output.
    config : ``Settings.notifications``; a channel that is None is off.
    state_db : SQLite file recording what was sent and when (rate limit, no repeats).
    now : the current time (default: the clock); lets a caller replay a schedule.

    Returns
    -------
    NotifyReport with, per channel, the incidents sent, deferred by the rate limit,
    filtered out, already notified, and the error if the send failed.

    Raises
    ------
    ConfigError
        A channel's ``min_severity`` is not a severity, or its password variable is unset.
    """
    now = now or datetime.now(timezone.utc)
    if now.tzinfo is None:  # a naive time is taken as UTC, like every time in Watch Tower
        now = now.replace(tzinfo=timezone.utc)
    state = _State(Path(state_db))
    report = NotifyReport()
    channels: list[tuple[str, WebhookConfig | EmailConfig]] = []
    if config.webhook is not None:
        channels.append(("webhook", config.webhook))
    if config.email is not None:
        channels.append(("email", config.email))
    for name, channel in channels:
        if channel.min_severity not in SEVERITY_RANK:
            raise ConfigError(f"notifications.{name}.min_severity must be one of {', '.join(SEVERITIES)}, "
                              f"got {channel.min_severity!r}")
        result = ChannelReport(name)
        report.channels.append(result)
        rows = incidents
        if "status" in rows:
            rows = rows[rows["status"] != "closed"]
        severe = rows["max_severity"].map(SEVERITY_RANK).fillna(-1) >= SEVERITY_RANK[channel.min_severity]
        result.below_severity = int((~severe).sum())
        done = state.sent(name)
        fresh = rows[severe & ~rows["incident_id"].isin(done)]
        result.already_notified = int((severe & rows["incident_id"].isin(done)).sum())
        if fresh.empty:
            continue
        last = state.last_sent(name)
        next_allowed = last + timedelta(seconds=channel.min_interval_seconds) if last else None
        if next_allowed is not None and now < next_allowed:
            result.deferred = list(fresh["incident_id"])
            result.next_allowed_at = next_allowed
            log.info("%s: %d incidents held back by the rate limit until %s", name, len(fresh), next_allowed)
            continue
        payload = [_incident_dict(r) for r in fresh.to_dict("records")]
        try:
            if isinstance(channel, WebhookConfig):
                _post(channel, payload, now)
            else:
                _mail(channel, payload, now)
        except (OSError, smtplib.SMTPException) as exc:  # URLError, refused, timeout, SMTP refusal
            result.error = _describe(exc)
            log.warning("%s: sending %d incidents failed: %s (they stay pending)", name, len(payload), result.error)
            continue
        state.record(name, [p["incident_id"] for p in payload], now)
        result.sent = [p["incident_id"] for p in payload]
        log.info("%s: notified %d incidents", name, len(payload))
    return report


def configured(config: NotificationsConfig) -> bool:
    """Whether any notification channel (webhook or email) is switched on in the config."""
    return config.webhook is not None or config.email is not None


def notify_open(settings: Settings, *, send: bool | None = None, now: datetime | None = None) -> NotifyReport:
    """Notify the configured channels of the alert store's open incidents: phase 6 and ``watchtower detect``.

    One decision for both: ``send`` None (the default) or True notifies when a channel is configured,
    False never. Open means not closed, so an incident acknowledged before any channel told anyone
    is still sent once; each channel's record of what it sent keeps every incident to one message.

    Returns
    -------
    NotifyReport
        Empty (no channels; ``summary()`` says none is configured) when nothing was to be sent.
    """
    if send is False or not configured(settings.notifications):
        return NotifyReport()
    from .alert_store import AlertStore

    incidents = AlertStore(settings.alerts_db).incidents()
    return notify(incidents[incidents["status"] != "closed"], settings.notifications, settings.alerts_db, now=now)


def _post(config: WebhookConfig, incidents: list[dict[str, Any]], now: datetime) -> None:
    body = json.dumps({"source": "watchtower", "sent_at": now.strftime(_TS), "count": len(incidents),
                       "incidents": incidents}, sort_keys=True).encode()
    request = urllib.request.Request(config.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "watchtower-notify"})
    with urllib.request.urlopen(request, timeout=config.timeout) as response:  # noqa: S310 (URL is config)
        response.read()  # HTTPError (>= 400) is raised by urlopen and caught by the caller


def _mail(config: EmailConfig, incidents: list[dict[str, Any]], now: datetime) -> None:
    worst = max((i["max_severity"] for i in incidents), key=lambda s: SEVERITY_RANK.get(s, -1))
    message = EmailMessage()
    message["From"] = config.sender
    message["To"] = ", ".join(config.recipients)
    message["Subject"] = f"[Watch Tower] {len(incidents)} new incident{'s' * (len(incidents) != 1)} (max {worst})"
    lines = [f"Watch Tower found {len(incidents)} new incident(s) at {now:%Y-%m-%d %H:%M:%S} UTC.", ""]
    for inc in incidents:
        lines.append(f"- [{inc['max_severity']}] {inc['kind']} {inc['src_ip']} -> {inc['dst_ip']}: "
                     f"{inc['count']} alerts, {inc['first_seen']} .. {inc['last_seen']}"
                     + (f", family {inc['family']}" if inc.get("family") else "")
                     + f"  (id {inc['incident_id']})")
    lines += ["", "Acknowledge or close with: watchtower alerts ack|close INCIDENT_ID", ""]
    message.set_content("\n".join(lines))
    message.add_attachment(json.dumps(incidents, indent=1, sort_keys=True).encode(), maintype="application",
                           subtype="json", filename="incidents.json")
    password = None
    if config.username and config.password_env:
        import os

        password = os.environ.get(config.password_env)
        if password is None:
            raise ConfigError(f"notifications.email.password_env names {config.password_env!r} "
                              f"but that environment variable is not set")
    with smtplib.SMTP(config.host, config.port, timeout=config.timeout) as smtp:
        if config.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if config.username and password is not None:
            smtp.login(config.username, password)
        smtp.send_message(message)


def _incident_dict(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _FIELDS:
        if key not in row:
            continue
        value = row[key]
        if isinstance(value, (pd.Timestamp, datetime)):
            value = pd.Timestamp(value).tz_convert("UTC").strftime(_TS) if pd.Timestamp(value).tzinfo \
                else pd.Timestamp(value).strftime(_TS)
        elif value is None or value is pd.NA or (isinstance(value, float) and value != value):
            value = None
        elif hasattr(value, "item"):
            value = value.item()
        out[key] = value
    return out


def _describe(exc: BaseException) -> str:
    """A one-line reason without credentials (SMTP auth errors echo only the server's reply)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot reach the webhook ({exc.reason})"
    return f"{type(exc).__name__}: {exc}"


class _State:
    """The channel state in SQLite: last send per channel, and incidents already notified."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the notification state ({exc})") from exc
        try:
            yield db
        finally:
            db.close()

    def sent(self, channel: str) -> set[str]:
        with self._db() as db:
            return {r[0] for r in db.execute("SELECT incident_id FROM notify_sent WHERE channel = ?", (channel,))}

    def last_sent(self, channel: str) -> datetime | None:
        with self._db() as db:
            row = db.execute("SELECT last_sent_at FROM notify_channels WHERE channel = ?", (channel,)).fetchone()
        return datetime.strptime(row[0], _TS).replace(tzinfo=timezone.utc) if row else None

    def record(self, channel: str, incident_ids: list[str], at: datetime) -> None:
        stamp = at.astimezone(timezone.utc).strftime(_TS)
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO notify_channels VALUES (?, ?) ON CONFLICT(channel) "
                       "DO UPDATE SET last_sent_at = excluded.last_sent_at", (channel, stamp))
            db.executemany("INSERT OR IGNORE INTO notify_sent VALUES (?, ?, ?)",
                           [(channel, i, stamp) for i in incident_ids])
            db.execute("COMMIT")
