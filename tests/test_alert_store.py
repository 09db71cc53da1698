"""The SQLite alert store: idempotent upserts, incident status, filters, ES catch-up, WAL concurrency."""
from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import IsolationForest

from conftest import require
from test_notify import _url, webhook  # noqa: F401 (a real HTTP server on 127.0.0.1, as a fixture)
from watchtower_lib import alerts, config, notify, zeek
from watchtower_lib.alert_store import AlertStore, severity_at_least
from watchtower_lib.errors import StoreError

SCAN = "scenarios/stratosphere-sdt/002-nmap-port-scanning/conn.log"
NUMERIC = ["duration", "orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts"]


def alerts_from_conn(conn: pd.DataFrame, threshold: float, version: str = "store-test-v1") -> pd.DataFrame:
    """Real alerts without the models module: an IsolationForest over log-scaled conn counters."""
    num = conn[NUMERIC].assign(duration=conn["duration"].dt.total_seconds())  # pandas 3.1 refuses timedelta -> float
    x = np.log1p(num.astype(float).fillna(0.0).to_numpy())
    score = -IsolationForest(random_state=0, n_estimators=50).fit(x).score_samples(x)
    rows = np.flatnonzero(score >= threshold)
    sub = conn.iloc[rows]
    out = pd.DataFrame({
        "id": [alerts.alert_id(version, u, "unknown") for u in sub["uid"]],
        "ts": sub["ts"].to_numpy(), "sensor": "scan-lab",
        "src_ip": sub["id.orig_h"].to_numpy(), "src_port": sub["id.orig_p"].to_numpy(),
        "dst_ip": sub["id.resp_h"].to_numpy(), "dst_port": sub["id.resp_p"].to_numpy(),
        "proto": sub["proto"].to_numpy(), "service": sub["service"].to_numpy(), "kind": "unknown",
        "family": pd.NA, "score": score[rows], "severity": alerts.severity("unknown", score[rows], threshold),
        "explanation": "orig_pkts high", "explanation_json": "[]", "uid": sub["uid"].to_numpy(),
        "model_version": version,
    })
    return alerts._typed(out)


@pytest.fixture(scope="module")
def scan_alerts(shared_data):
    conn = zeek.read_log(shared_data / SCAN)
    return alerts_from_conn(conn, threshold=0.0)  # every connection of the scan


@pytest.fixture
def store(tmp_path):
    return AlertStore(tmp_path / "alerts.sqlite")


def test_upsert_is_idempotent(store, scan_alerts):
    assert store.upsert_alerts(scan_alerts) == 4504
    assert store.upsert_alerts(scan_alerts) == 0  # rerun of detect: nothing new
    assert store.upsert_alerts(scan_alerts.iloc[::-1]) == 0
    stored = store.alerts()
    assert len(stored) == 4504
    assert set(stored["id"]) == set(scan_alerts["id"])
    one = stored.set_index("uid").loc["C5xhsO3uGtOfyrBlHh"]
    assert (one["dst_ip"], one["dst_port"], one["proto"]) == ("8.8.8.8", 53, "udp")
    assert one["ts"] == pd.Timestamp("2022-09-29T14:40:56.755299Z")


def test_filters_by_time_kind_and_score(store, scan_alerts):
    store.upsert_alerts(scan_alerts)
    window = store.alerts(start="2022-09-29T15:30:00Z", end="2022-09-29T15:40:00Z")
    expected = scan_alerts[(scan_alerts["ts"] >= pd.Timestamp("2022-09-29T15:30:00Z"))
                           & (scan_alerts["ts"] < pd.Timestamp("2022-09-29T15:40:00Z"))]
    assert len(window) == len(expected) == 3242
    assert store.alerts(kind="known").empty
    high = store.alerts(min_score=0.6)
    assert len(high) == int((scan_alerts["score"] >= 0.6).sum()) > 0
    assert high["score"].min() >= 0.6


def test_incident_status_lifecycle(store, scan_alerts):
    store.upsert_alerts(scan_alerts)
    incidents = alerts.group_incidents(scan_alerts, 60)
    assert store.upsert_incidents(incidents) == 1
    assert store.upsert_incidents(incidents) == 0  # regrouping the same alerts changes nothing
    (inc,) = store.incidents().itertuples()
    assert (inc.status, inc.count, inc.dst_ip, inc.n_destinations) == ("new", 4504, "*", 182)
    assert store.alerts(incident_id=inc.incident_id).shape[0] == 4504
    full = store.set_status(inc.incident_id[:10], "acknowledged", note="known pentest")
    assert full == inc.incident_id
    assert store.incidents("acknowledged")["note"].tolist() == ["known pentest"]
    store.set_status(full, "closed")
    assert store.incidents("new").empty and len(store.incidents("closed")) == 1
    assert store.events(full)["status"].tolist() == ["new", "acknowledged", "closed"]
    with pytest.raises(StoreError, match="no incident matches"):
        store.set_status("inc-doesnotexist", "closed")
    with pytest.raises(StoreError, match="status must be one of"):
        store.set_status(full, "resolved")


def test_closed_incident_reopens_when_it_grows(store, scan_alerts):
    early = scan_alerts[scan_alerts["ts"] < pd.Timestamp("2022-09-29T15:40:00Z")]
    store.upsert_alerts(early)
    store.upsert_incidents(alerts.group_incidents(early, 60))
    (first,) = store.incidents().itertuples()
    store.set_status(first.incident_id, "closed", note="looked at it")
    store.upsert_alerts(scan_alerts)  # the next run sees the rest of the scan
    store.upsert_incidents(alerts.group_incidents(store.alerts(), 60))
    (again,) = store.incidents().itertuples()
    assert again.incident_id == first.incident_id  # same first alert, same incident
    assert again.count == 4504 > first.count
    assert again.status == "new" and again.note == f"reopened: {4504 - first.count} new alerts"


def test_pending_es_until_marked(store, scan_alerts):
    store.upsert_alerts(scan_alerts.head(100))
    assert len(store.pending_es()) == 100
    assert store.mark_es_indexed(store.pending_es()["id"].head(60)) == 60
    store.upsert_alerts(scan_alerts.head(150))  # rerun plus 50 new
    pending = store.pending_es()
    assert len(pending) == 90 and not pending["es_indexed"].any()


def test_wal_lets_a_reader_read_while_a_writer_writes(store, scan_alerts):
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    chunks = np.array_split(np.arange(len(scan_alerts)), 20)
    errors: list[BaseException] = []

    def write():
        try:
            for chunk in chunks:
                store.upsert_alerts(scan_alerts.iloc[chunk])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    seen = []
    while writer.is_alive():
        seen.append(len(store.alerts()))
    writer.join()
    assert not errors
    assert seen == sorted(seen)  # a reader sees whole transactions only, growing
    boundaries = {0, *np.cumsum([len(c) for c in chunks]).tolist()}
    assert set(seen) <= boundaries  # never half a transaction
    assert len(store.alerts()) == 4504


def test_severity_at_least():
    s = pd.Series(["low", "medium", "high", "critical"])
    assert severity_at_least(s, "high").tolist() == [False, False, True, True]
    with pytest.raises(StoreError):
        severity_at_least(s, "urgent")


def test_cli_list_show_ack_close(tmp_path, scan_alerts, monkeypatch):
    from click.testing import CliRunner

    from watchtower_lib.cli import cli

    monkeypatch.chdir(tmp_path)  # default config: ./alerts.sqlite
    monkeypatch.delenv("WATCHTOWER_CONFIG", raising=False)
    db = AlertStore(tmp_path / "alerts.sqlite")
    db.upsert_alerts(scan_alerts)
    db.upsert_incidents(alerts.group_incidents(scan_alerts, 10))
    runner = CliRunner()
    listed = runner.invoke(cli, ["alerts", "list"])
    assert listed.exit_code == 0, listed.output
    assert len(listed.output.strip().splitlines()) == 6  # header + 5 incidents
    assert "172.16.1.11 -> *" in listed.output
    sweep = db.incidents().query("dst_ip == '*'").iloc[0].incident_id
    shown = runner.invoke(cli, ["alerts", "show", sweep[:12], "--limit", "3"])
    assert shown.exit_code == 0 and f"{sweep}  new" in shown.output
    assert len(shown.output.strip().splitlines()) == 4
    acked = runner.invoke(cli, ["alerts", "ack", sweep[:12], "--note", "red team exercise"])
    assert acked.exit_code == 0 and acked.output.strip() == f"{sweep}: acknowledged"
    closed = runner.invoke(cli, ["alerts", "close", sweep])
    assert closed.exit_code == 0
    assert db.incidents("closed")["note"].tolist() == ["red team exercise"]
    assert "172.16.1.11 -> *" not in runner.invoke(cli, ["alerts", "list"]).output
    assert "172.16.1.11 -> *" in runner.invoke(cli, ["alerts", "list", "--status", "closed"]).output
    missing = runner.invoke(cli, ["alerts", "ack", "inc-nope"])
    assert missing.exit_code != 0 and isinstance(missing.exception, StoreError)
    assert "Acknowledge an incident" in runner.invoke(cli, ["alerts", "--help"]).output


def test_index_pending_with_the_node_down_keeps_everything_pending(store, scan_alerts):
    import socket

    from watchtower_lib.alert_store import index_pending
    from watchtower_lib.config import load
    from watchtower_lib.errors import IntegrationError

    # the client library only (no node: the point is the node being down); like test_es, a missing
    # client skips here but fails where CI sets WATCHTOWER_REQUIRE_ES
    try:
        import elasticsearch  # noqa: F401
        client = True
    except ImportError:
        client = False
    require("ES", client, "the client: pip install 'watchtower-zeek[es]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    settings = load(env={"WATCHTOWER_ES_URL": f"http://127.0.0.1:{port}", "WATCHTOWER_ELASTICSEARCH__MAX_RETRIES": "0"})
    store.upsert_alerts(scan_alerts.head(10))
    with pytest.raises(IntegrationError, match="unreachable"):
        index_pending(store, settings=settings)
    assert len(store.pending_es()) == 10


def test_incidents_of_a_period_are_those_overlapping_it(store, scan_alerts):
    store.upsert_alerts(scan_alerts)
    store.upsert_incidents(alerts.group_incidents(scan_alerts, 10))
    every = store.incidents()
    assert len(every) == 5  # the scan split at its quiet gaps
    start, end = pd.Timestamp("2022-09-29T15:30:00Z"), pd.Timestamp("2022-09-29T15:40:00Z")
    expected = every[(every["last_seen"] >= start) & (every["first_seen"] < end)]
    overlapping = store.incidents(start=start, end=end)
    assert 0 < len(overlapping) < len(every)
    assert overlapping["incident_id"].tolist() == expected["incident_id"].tolist()  # same order as incidents()
    # the bounds: an incident that ends exactly at start is in, one that begins exactly at end is out
    first = every.sort_values("first_seen").iloc[0]
    assert first.incident_id in set(store.incidents(start=first.last_seen, end=first.last_seen
                                                    + pd.Timedelta(1, "h"))["incident_id"])
    assert first.incident_id not in set(store.incidents(start=first.first_seen - pd.Timedelta(1, "h"),
                                                        end=first.first_seen)["incident_id"])
    assert store.incidents(start="2022-09-30", end="2022-10-07").empty
    assert len(store.incidents("new", start=start, end=end)) == len(expected)  # status and period combine
    store.set_status(expected["incident_id"].iloc[0], "closed")
    assert len(store.incidents("new", start=start, end=end)) == len(expected) - 1
    assert len(store.incidents(start=start.isoformat(), end=end.to_pydatetime())) == len(expected)  # text, datetime


def test_notify_open_sends_the_stores_open_incidents_once(tmp_path, scan_alerts, webhook):  # noqa: F811
    """The decision phase 6 and `watchtower detect` share: open incidents, to configured channels, once."""
    (tmp_path / "watchtower.yml").write_text(
        f"alerts_db: alerts.sqlite\nnotifications:\n  webhook: {{url: '{_url(webhook)}', min_severity: low}}\n")
    settings = config.load(tmp_path / "watchtower.yml", env={})
    db = AlertStore(settings.alerts_db)
    db.upsert_alerts(scan_alerts)
    db.upsert_incidents(alerts.group_incidents(scan_alerts, 10))
    ids = db.incidents()["incident_id"].tolist()
    assert len(ids) == 5
    db.set_status(ids[0], "closed")
    db.set_status(ids[1], "acknowledged")  # seen by an analyst, but no channel has told anyone yet
    assert notify.notify_open(settings, send=False).channels == [] and webhook.received == []
    sent = notify.notify_open(settings)
    assert sent.ok and sent.sent == 4 and [c.channel for c in sent.channels] == ["webhook"]
    ((_, body),) = webhook.received
    assert sorted(i["incident_id"] for i in body["incidents"]) == sorted(ids[1:])
    assert {i["status"] for i in body["incidents"]} == {"new", "acknowledged"}
    again = notify.notify_open(settings, send=True)
    assert again.sent == 0 and again.channels[0].already_notified == 4 and len(webhook.received) == 1
    quiet = notify.notify_open(config.load(env={"WATCHTOWER_ALERTS_DB": str(settings.alerts_db)}))
    assert quiet.channels == [] and quiet.sent == 0 and quiet.summary() == "no notification channel configured"
    assert notify.configured(settings.notifications) and not notify.configured(config.Settings().notifications)
