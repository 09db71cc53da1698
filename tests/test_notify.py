"""Notifications against a real HTTP server and a real SMTP server on 127.0.0.1 (no mocks)."""
from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import IsolationForest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from watchtower_lib import alerts, zeek
from watchtower_lib.config import EmailConfig, NotificationsConfig, WebhookConfig
from watchtower_lib.notify import notify

SCAN = "scenarios/stratosphere-sdt/002-nmap-port-scanning/conn.log"
NUMERIC = ["duration", "orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts"]
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def incidents(shared_data):
    """Real incidents: the nmap scan's connections grouped per destination (183 pair incidents).

    Scores come from a real IsolationForest over log-scaled counters (anomaly threshold 0.45),
    which gives the incidents a mix of severities: 22 low, 149 medium, 12 high.
    """
    conn = zeek.read_log(shared_data / SCAN)
    num = conn[NUMERIC].assign(duration=conn["duration"].dt.total_seconds())  # pandas 3.1 refuses timedelta -> float
    x = np.log1p(num.astype(float).fillna(0.0).to_numpy())
    score = -IsolationForest(random_state=0, n_estimators=50).fit(x).score_samples(x)
    frame = pd.DataFrame({
        "id": [alerts.alert_id("notify-test", u, "unknown") for u in conn["uid"]], "ts": conn["ts"],
        "sensor": "lab", "src_ip": conn["id.orig_h"], "src_port": conn["id.orig_p"], "dst_ip": conn["id.resp_h"],
        "dst_port": conn["id.resp_p"], "proto": conn["proto"], "service": conn["service"], "kind": "unknown",
        "family": pd.NA, "score": score, "severity": alerts.severity("unknown", score, 0.45),
        "explanation": "", "explanation_json": "[]", "uid": conn["uid"], "model_version": "notify-test",
    })
    out = alerts.group_incidents(alerts._typed(frame), 60, fan_out=None)
    return out.assign(status="new")


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(self.server.status)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.received, server.status = [], 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class _Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content,
                              session.auth_data if session.authenticated else None))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp():
    inbox = _Inbox()

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"s3cret-Pa55"
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port(), authenticator=authenticate,
                            auth_require_tls=False)
    controller.start()
    yield controller, inbox
    controller.stop()


def _url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/hook"


def test_webhook_posts_only_severe_unnotified_incidents(webhook, incidents, tmp_path):
    config = NotificationsConfig(webhook=WebhookConfig(url=_url(webhook), min_interval_seconds=60,
                                                       min_severity="high"))
    severe = incidents[incidents["max_severity"].isin(["high", "critical"])]
    assert 0 < len(severe) < len(incidents)
    report = notify(incidents, config, tmp_path / "state.sqlite", now=T0)
    assert report.ok and report.sent == len(severe)
    (content_type, body), = webhook.received
    assert content_type == "application/json"
    assert body["count"] == len(severe)
    assert {i["incident_id"] for i in body["incidents"]} == set(severe["incident_id"])
    first = next(i for i in body["incidents"] if i["dst_ip"] == "8.8.8.8")
    assert first["src_ip"] == "172.16.1.11" and first["first_seen"] == "2022-09-29T14:40:56.755299Z"
    assert report.channels[0].below_severity == len(incidents) - len(severe)
    # a rerun long after: nothing new, nothing posted
    again = notify(incidents, config, tmp_path / "state.sqlite", now=T0 + timedelta(hours=2))
    assert again.sent == 0 and again.channels[0].already_notified == len(severe)
    assert len(webhook.received) == 1


def test_rate_limit_defers_and_a_later_run_sends(webhook, incidents, tmp_path):
    config = NotificationsConfig(webhook=WebhookConfig(url=_url(webhook), min_interval_seconds=300,
                                                       min_severity="low"))
    state = tmp_path / "state.sqlite"
    first, second = incidents.iloc[:100], incidents.iloc[100:]
    assert notify(first, config, state, now=T0).sent == 100
    held = notify(incidents, config, state, now=T0 + timedelta(seconds=299))
    assert held.sent == 0 and held.channels[0].deferred == list(second["incident_id"])
    assert held.channels[0].next_allowed_at == T0 + timedelta(seconds=300)
    assert len(webhook.received) == 1  # the limit held
    later = notify(incidents, config, state, now=T0 + timedelta(seconds=300))
    assert later.sent == len(second) == 83
    assert len(webhook.received) == 2
    assert {i["incident_id"] for i in webhook.received[1][1]["incidents"]} == set(second["incident_id"])


def test_rate_limit_on_the_real_clock(webhook, incidents, tmp_path):
    config = NotificationsConfig(webhook=WebhookConfig(url=_url(webhook), min_interval_seconds=1.0,
                                                       min_severity="low"))
    state = tmp_path / "state.sqlite"
    assert notify(incidents.iloc[:1], config, state).sent == 1
    assert notify(incidents.iloc[:2], config, state).sent == 0  # within the second
    time.sleep(1.1)
    assert notify(incidents.iloc[:2], config, state).sent == 1
    assert [len(b["incidents"]) for _, b in webhook.received] == [1, 1]


def test_failed_webhook_is_retried_next_run(webhook, incidents, tmp_path):
    config = NotificationsConfig(webhook=WebhookConfig(url=_url(webhook), min_interval_seconds=60,
                                                       min_severity="low"))
    webhook.status = 503
    report = notify(incidents.iloc[:5], config, tmp_path / "s.sqlite", now=T0)
    assert not report.ok and report.channels[0].error == "HTTP 503 Service Unavailable"
    webhook.status = 200
    retry = notify(incidents.iloc[:5], config, tmp_path / "s.sqlite", now=T0 + timedelta(seconds=1))
    assert retry.ok and retry.sent == 5  # a failure does not start the rate-limit clock
    down = NotificationsConfig(webhook=WebhookConfig(url=f"http://127.0.0.1:{_free_port()}/", min_severity="low"))
    report = notify(incidents.iloc[:5], down, tmp_path / "other.sqlite", now=T0)
    assert report.channels[0].error.startswith("cannot reach the webhook")


def test_email_sent_with_login_and_password_never_logged(smtp, incidents, tmp_path, monkeypatch, caplog):
    controller, inbox = smtp
    monkeypatch.setenv("WT_TEST_SMTP_PASSWORD", "s3cret-Pa55")
    config = NotificationsConfig(email=EmailConfig(
        host="127.0.0.1", port=controller.port, sender="watchtower@example.org",
        recipients=("soc@example.org", "oncall@example.org"), username="watchtower",
        password_env="WT_TEST_SMTP_PASSWORD", min_interval_seconds=300, min_severity="high"))
    severe = incidents[incidents["max_severity"] == "high"]
    with caplog.at_level(logging.DEBUG):
        report = notify(incidents, config, tmp_path / "state.sqlite", now=T0)
    assert report.ok and report.sent == len(severe)
    (sender, rcpts, content, auth), = inbox.messages
    assert sender == "watchtower@example.org" and rcpts == ["soc@example.org", "oncall@example.org"]
    assert auth is not None and auth.login == b"watchtower"
    msg = email.message_from_bytes(content, policy=email.policy.default)
    assert msg["Subject"] == f"[Watch Tower] {len(severe)} new incidents (max high)"
    text = msg.get_body(("plain",)).get_content()
    assert all(i in text for i in severe["incident_id"])
    attached = json.loads(next(msg.iter_attachments()).get_content())
    assert len(attached) == len(severe)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("watchtower_lib"))
    assert "email: notified" in ours and "s3cret-Pa55" not in ours
    # the rate limit holds for email too, and a wrong password is a reported failure, not a crash
    assert notify(incidents.assign(max_severity="critical"), config, tmp_path / "state.sqlite",
                  now=T0 + timedelta(seconds=10)).channels[0].deferred
    monkeypatch.setenv("WT_TEST_SMTP_PASSWORD", "wrong")
    bad = notify(incidents, config, tmp_path / "fresh.sqlite", now=T0)
    assert not bad.ok and "535" in bad.channels[0].error and "wrong" not in bad.channels[0].error
    assert len(inbox.messages) == 1


def test_both_channels_are_independent(webhook, smtp, incidents, tmp_path):
    controller, inbox = smtp
    config = NotificationsConfig(
        webhook=WebhookConfig(url=_url(webhook), min_severity="medium"),
        email=EmailConfig(host="127.0.0.1", port=controller.port, sender="wt@example.org",
                          recipients=("soc@example.org",), min_severity="high"))
    report = notify(incidents, config, tmp_path / "state.sqlite", now=T0)
    by = {c.channel: c for c in report.channels}
    medium_up = incidents["max_severity"].isin(["medium", "high"]).sum()
    assert len(by["webhook"].sent) == medium_up
    assert len(by["email"].sent) == (incidents["max_severity"] == "high").sum()
    assert len(webhook.received) == 1 and len(inbox.messages) == 1
