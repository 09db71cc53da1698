"""Alerts and incidents on real captures: deterministic ids, severities, explanations, one incident per scan."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from conftest import ES_URL, require
from watchtower_lib import alerts, zeek
from watchtower_lib.errors import ModelError

SCAN = "scenarios/stratosphere-sdt/002-nmap-port-scanning/conn.log"
NORMAL40 = "labelled/stratosphere-sdt/008-ctu-normal-40-day1/conn.log.labeled"
NORMAL43 = "labelled/stratosphere-sdt/011-ctu-normal-43-day1/conn.log.labeled"


@pytest.fixture(scope="module")
def scan(shared_data) -> pd.DataFrame:
    return zeek.read_log(shared_data / SCAN)


def as_alerts(conn: pd.DataFrame, kind: str = "unknown", score: float = 0.7) -> pd.DataFrame:
    """Every connection of a real capture as an alert, to test grouping apart from any model."""
    frame = pd.DataFrame({
        "id": [alerts.alert_id("grouping", u, kind) for u in conn["uid"]], "ts": conn["ts"], "sensor": "lab",
        "src_ip": conn["id.orig_h"], "src_port": conn["id.orig_p"], "dst_ip": conn["id.resp_h"],
        "dst_port": conn["id.resp_p"], "proto": conn["proto"], "service": conn["service"], "kind": kind,
        "family": pd.NA, "score": score, "severity": alerts.severity(kind, np.full(len(conn), score), 0.5),
        "explanation": "", "explanation_json": "[]", "uid": conn["uid"], "model_version": "grouping",
    })
    return alerts._typed(frame)


# -- grouping (no model involved) ---------------------------------------------------------------


def test_the_nmap_scan_is_one_incident(scan):
    found = as_alerts(scan)
    incidents = alerts.group_incidents(found, window_minutes=60)
    assert len(incidents) == 1
    inc = incidents.iloc[0]
    assert (inc.src_ip, inc.dst_ip, inc.scope, inc.kind) == ("172.16.1.11", "*", "fan-out", "unknown")
    assert (inc["count"], inc.n_destinations, inc.n_ports) == (4504, 182, 105)
    assert inc.first_seen == pd.Timestamp("2022-09-29T14:40:56.755299Z")
    assert inc.last_seen == pd.Timestamp("2022-09-29T15:47:35.076524Z")
    assert sorted(inc.alert_ids) == sorted(found["id"])


def test_without_fan_out_each_destination_is_an_incident(scan):
    incidents = alerts.group_incidents(as_alerts(scan), 60, fan_out=None)
    assert (incidents["scope"] == "pair").all()
    assert incidents["dst_ip"].nunique() == 182
    assert len(incidents) == 183  # 8.8.8.8 twice: DNS at 14:40, again after a gap of more than an hour
    assert incidents["count"].sum() == 4504
    dns = incidents[incidents["dst_ip"] == "8.8.8.8"].sort_values("first_seen")
    assert dns["count"].tolist() == [4, 20]


def test_the_window_splits_incidents_at_gaps(scan):
    incidents = alerts.group_incidents(as_alerts(scan), window_minutes=10)
    # DNS lookups at 14:40, three single-host probes from 15:06, then the sweep from 15:20 on
    assert incidents["scope"].tolist() == ["pair", "pair", "pair", "pair", "fan-out"]
    assert incidents["dst_ip"].tolist()[:4] == ["8.8.8.8", "172.16.1.30", "172.16.1.8", "172.16.1.24"]
    sweep = incidents.iloc[-1]
    assert sweep.first_seen == pd.Timestamp("2022-09-29T15:20:50.097338Z")
    assert incidents["count"].sum() == 4504


def test_kinds_are_separate_incidents(scan):
    dns = scan[scan["id.resp_h"] == "8.8.8.8"]
    both = pd.concat([as_alerts(scan, "unknown"), as_alerts(dns, "known", 0.9)], ignore_index=True)
    incidents = alerts.group_incidents(both, 60)
    assert sorted(incidents["kind"]) == ["known", "known", "unknown"]
    known = incidents[incidents["kind"] == "known"]
    assert known["count"].tolist() == [4, 20]  # the two DNS bursts, more than an hour apart
    assert set(known["max_severity"]) == {"high"} and set(known["dst_ip"]) == {"8.8.8.8"}


def test_incident_ids_do_not_depend_on_row_order(scan):
    found = as_alerts(scan)
    ids = alerts.incident_ids(found, 10)
    shuffled = found.sample(frac=1.0, random_state=7)
    assert alerts.incident_ids(shuffled, 10).reindex(found.index).equals(ids)
    assert ids.nunique() == 5
    assert alerts.group_incidents(found.iloc[:0]).empty


# -- the documented rules ---------------------------------------------------------------------


def test_severity_rule():
    known = alerts.severity("known", [0.5, 0.59, 0.6, 0.79, 0.8, 0.949, 0.95, 1.0])
    assert known.tolist() == ["low", "low", "medium", "medium", "high", "high", "critical", "critical"]
    # unknown: margin over the threshold 0.6; never critical
    unknown = alerts.severity("unknown", [0.6, 0.679, 0.68, 0.799, 0.8, 1.0], threshold=0.6)
    assert unknown.tolist() == ["low", "low", "medium", "medium", "high", "high"]
    with pytest.raises(ValueError):
        alerts.severity("maybe", [0.5])


def test_alert_id_is_the_documented_hash():
    expected = hashlib.sha256(b"v3|CYfoLE3xWbRRR3bBV6|known").hexdigest()[:32]
    assert alerts.alert_id("v3", "CYfoLE3xWbRRR3bBV6", "known") == expected
    assert alerts.alert_id("v4", "CYfoLE3xWbRRR3bBV6", "known") != expected


# -- detect with the real models ----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(shared_data):
    """The forest trained on capture 008 (attacks on a Windows host), the isolation forest on
    capture 011's benign traffic with its 99th percentile as threshold: neither saw the nmap scan."""
    from watchtower_lib import models
    from watchtower_lib.labels import read_labelled as labelled

    normal40 = labelled(shared_data / NORMAL40)
    supervised = models.build_supervised().fit(normal40, normal40["label"], forest__detail=normal40["detail"])
    normal43 = labelled(shared_data / NORMAL43)
    benign = normal43[normal43["label"] == "benign"]
    unsupervised = models.build_unsupervised().fit(benign)
    threshold = float(np.quantile(models.anomaly_score(unsupervised, benign), 0.99))
    return (supervised, {"version": "sup-test-1"}), (unsupervised, {"version": "uns-test-1",
                                                                   "threshold": threshold})


@pytest.fixture(scope="module")
def found(trained, scan):
    return alerts.detect(scan, *trained)


def test_detect_is_deterministic_and_explained(trained, scan, found):
    sup, uns = trained
    first = found
    again = alerts.detect(scan, sup, uns)
    pd.testing.assert_frame_equal(first, again)
    assert list(first.columns) == alerts.ALERT_COLUMNS
    assert first["id"].is_unique
    assert set(first["kind"]) <= {"known", "unknown"} and len(first) > 0
    row = first.iloc[0]
    version = "sup-test-1" if row.kind == "known" else "uns-test-1"
    assert row.id == alerts.alert_id(version, row.uid, row.kind) and row.model_version == version
    original = scan.set_index("uid").loc[row.uid]
    assert (row.src_ip, row.dst_ip, row.dst_port, row.ts) == (
        original["id.orig_h"], original["id.resp_h"], original["id.resp_p"], original["ts"])
    for text, structured in zip(first["explanation"].head(50), first["explanation_json"].head(50)):
        items = json.loads(structured)
        assert len(items) == 3
        assert {"feature", "value", "baseline_median", "effect"} <= set(items[0])
        assert all(item["feature"] in text for item in items)
    unknown = first[first["kind"] == "unknown"]
    assert unknown["family"].isna().all()
    assert (unknown["score"] >= uns[1]["threshold"]).all()
    known = first[first["kind"] == "known"]
    assert (known["score"] >= 0.5).all()
    assert set(first["severity"]) <= set(alerts.SEVERITIES)
    assert "critical" not in set(unknown["severity"])


def test_a_new_model_version_gives_new_ids(trained, scan):
    (sup, card), _ = trained
    part = scan.head(1000)
    old = alerts.detect(part, (sup, card), None)
    new = alerts.detect(part, (sup, {"version": "sup-test-2"}), None)
    assert len(old) > 0
    assert len(old) == len(new) and not set(old["id"]) & set(new["id"])
    assert (old["uid"].to_numpy() == new["uid"].to_numpy()).all()


def test_either_model_may_be_missing(trained, scan):
    sup, uns = trained
    scan = scan.head(1000)
    assert set(alerts.detect(scan, sup, None)["kind"]) == {"known"}
    only_unknown = alerts.detect(scan, None, uns)
    assert set(only_unknown["kind"]) == {"unknown"}
    nothing = alerts.detect(scan, None, None)
    assert nothing.empty and list(nothing.columns) == alerts.ALERT_COLUMNS
    with pytest.raises(ModelError, match="threshold"):
        alerts.detect(scan, None, (uns[0], {"version": "no-threshold"}))
    strict = alerts.detect(scan, (sup[0], {"version": "calibrated", "threshold": 0.9}), None,
                           supervised_threshold=None)  # the card's calibrated threshold
    assert (strict["score"] >= 0.9).all()
    with pytest.raises(ModelError, match="threshold"):
        alerts.detect(scan, sup, None, supervised_threshold=None)
    everything = alerts.detect(scan.head(200), None, uns, anomaly_threshold=0.0)
    assert len(everything) == 200


def test_the_scan_flagged_by_the_models_is_a_handful_of_incidents(found):
    # measured: 2,246 known (External-Attack-to-Device) + 4,491 unknown alerts -> 2 incidents
    assert len(found) > 1000
    incidents = alerts.group_incidents(found, 60)
    assert len(incidents) <= 4  # at most one per kind and gap, not one per connection
    assert set(incidents["src_ip"]) == {"172.16.1.11"} and set(incidents["scope"]) == {"fan-out"}
    assert incidents["count"].sum() == len(found)
    known = incidents[incidents["kind"] == "known"]
    assert known["family"].tolist() == ["External-Attack-to-Device"]


# -- watchtower detect ----------------------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        self.server.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def deployment(tmp_path, shared_data, trained):
    """A store holding the nmap capture and both trained models saved as versions."""
    from watchtower_lib import models, store

    store.ingest([shared_data / SCAN], tmp_path / "store", sensor="lab-sensor")
    for kind, (model, card) in zip(("supervised", "unsupervised"), trained):
        version, vdir = models.new_version(tmp_path / "models", kind)
        models.save(model, vdir, {**card, "version": version, "kind": kind})
    return tmp_path


def _config(root, **sections) -> str:
    text = f"store_dir: {root / 'store'}\nmodels_dir: {root / 'models'}\nalerts_db: {root / 'alerts.sqlite'}\n"
    sections.setdefault("detection", ["supervised_threshold: 0.5"])  # the test forest's card has no threshold
    for name, body in sections.items():
        text += f"{name}:\n" + "".join(f"  {line}\n" for line in body)
    path = root / "watchtower.yml"
    path.write_text(text)
    return str(path)


def test_cli_detect_stores_notifies_and_keeps_es_pending(deployment, webhook, found, monkeypatch):
    from click.testing import CliRunner

    from watchtower_lib.alert_store import AlertStore
    from watchtower_lib.cli import cli

    for name in [n for n in os.environ if n.startswith("WATCHTOWER_") and not n.startswith("WATCHTOWER_REQUIRE")]:
        monkeypatch.delenv(name)
    config = _config(deployment,
                     notifications=["webhook:", f"  url: http://127.0.0.1:{webhook.server_address[1]}/hook",
                                    "  min_severity: low"],
                     elasticsearch=[f"url: http://127.0.0.1:{_closed_port()}", "max_retries: 0",
                                    "request_timeout: 2"])
    runner = CliRunner()
    first = runner.invoke(cli, ["--config", config, "detect"])
    assert first.exit_code == 0, first.output
    n = len(found)
    assert f"4,504 connections scored: {n:,} alerts ({n:,} new), 2 new incidents" in first.output
    assert "alerts not indexed into Elasticsearch" in first.output and "stay pending" in first.output
    assert "webhook: 2 sent" in first.output
    db = AlertStore(deployment / "alerts.sqlite")
    stored = db.alerts()
    assert len(stored) == n and set(stored["sensor"]) == {"lab-sensor"}
    assert sorted(stored["kind"].unique()) == sorted(found["kind"].unique())
    assert stored["incident_id"].notna().all()
    assert len(db.pending_es()) == n
    assert [len(post["incidents"]) for post in webhook.received] == [2]
    # a rerun adds nothing and notifies nobody again
    again = runner.invoke(cli, ["--config", config, "detect", "--no-notify"])
    assert again.exit_code == 0 and f"({0:,} new), 0 new incidents" in again.output
    again = runner.invoke(cli, ["--config", config, "detect"])
    assert again.exit_code == 0 and "webhook: 0 sent" in again.output
    assert len(webhook.received) == 1 and len(db.alerts()) == n and len(db.incidents()) == 2
    # a time range limits what is scored
    part = runner.invoke(cli, ["--config", config, "detect", "--start", "2022-09-29T15:40:00Z", "--no-notify"])
    assert part.exit_code == 0 and "543 connections scored" in part.output


def test_cli_detect_catches_up_on_elasticsearch(deployment, found, monkeypatch):
    from click.testing import CliRunner

    from watchtower_lib import es
    from watchtower_lib.alert_store import AlertStore
    from watchtower_lib.cli import cli
    from watchtower_lib.config import load

    url = ES_URL
    require("ES", bool(url), "set WATCHTOWER_ES_URL to a running node (scripts/es-node start)")
    prefix = f"wt-alerts-test-{uuid.uuid4().hex[:8]}"
    down = _config(deployment, elasticsearch=[f"url: http://127.0.0.1:{_closed_port()}", "max_retries: 0"])
    runner = CliRunner()
    assert runner.invoke(cli, ["--config", down, "detect"]).exit_code == 0
    db = AlertStore(deployment / "alerts.sqlite")
    assert len(db.pending_es()) == len(found)
    up = _config(deployment, elasticsearch=[f"url: {url}", f"index_prefix: {prefix}"])
    settings = load(up, env={})
    client = es.client(settings)
    try:
        es.install_templates(client, settings=settings)
        result = runner.invoke(cli, ["--config", up, "detect"])
        assert result.exit_code == 0, result.output
        assert f"elasticsearch: {len(found):,} alerts indexed ({len(found):,} new)" in result.output
        assert db.pending_es().empty
        client.indices.refresh(index=f"{prefix}-alerts")
        assert client.count(index=f"{prefix}-alerts")["count"] == len(found)
        first = db.alerts().iloc[0]
        hit = client.search(index=f"{prefix}-alerts", query={"term": {"event.id": first["id"]}})
        assert hit["hits"]["total"]["value"] == 1
        source = hit["hits"]["hits"][0]["_source"]
        assert (source["source.ip"], source["destination.port"], source["zeek.session_id"]) == (
            first["src_ip"], first["dst_port"], first["uid"])
    finally:
        client.indices.delete(index=f"{prefix}-*", ignore_unavailable=True, allow_no_indices=True)
        client.indices.delete_index_template(name=f"{prefix}-*")
        client.cluster.delete_component_template(name=f"{prefix}-ecs-base")


def test_detection_run_shows_its_steps_when_asked(deployment, capsys):
    """progress=True draws a bar of the named steps on stderr (the CLI asks when stderr is a terminal);
    the default, for notebooks and scheduled runs, draws nothing."""
    from watchtower_lib import detection
    from watchtower_lib.config import load

    settings = load(_config(deployment))
    detection.run(settings, progress=True)
    err = capsys.readouterr().err
    assert "detect" in err and "scoring 4,504 connections" in err and "grouping incidents" in err
    detection.run(settings)
    assert capsys.readouterr().err == ""


def test_cli_detect_without_models_fails_clearly(tmp_path, shared_data, monkeypatch):
    from click.testing import CliRunner

    from watchtower_lib import store
    from watchtower_lib.cli import cli, main

    store.ingest([shared_data / SCAN], tmp_path / "store")
    config = _config(tmp_path)
    result = CliRunner().invoke(cli, ["--config", config, "detect"])
    assert isinstance(result.exception, ModelError) and "watchtower train" in str(result.exception)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", config, "detect"])
    assert exit_info.value.code == 2
    assert "Exit codes" in CliRunner().invoke(cli, ["detect", "--help"]).output


def test_a_model_without_baseline_still_alerts_unexplained(scan, caplog):
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    def counters(frame):
        return frame[["orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes"]].astype(float).fillna(0.0)

    plain = Pipeline([("x", FunctionTransformer(counters)), ("iso", IsolationForest(random_state=0))]).fit(scan)
    found = alerts.detect(scan, None, (plain, {"version": "plain", "threshold": 0.6}))
    assert len(found) > 0 and (found["explanation_json"] == "[]").all()
    assert "unknown alerts without explanations" in caplog.text


def test_detection_after_retraining_does_not_store_the_same_connections_again(deployment, trained, found):
    """The scheduled pipeline retrains before each detection: a new model version must not re-alert."""
    from watchtower_lib import detection, models
    from watchtower_lib.alert_store import AlertStore
    from watchtower_lib.config import load

    settings = load(_config(deployment), env={})
    first = detection.run(settings)
    assert (first.connections, len(first.alerts), first.new_alerts) == (4504, len(found), len(found))
    assert all(first.model_versions.values())
    uns, card = trained[1]
    version, vdir = models.new_version(deployment / "models", "unsupervised")
    models.save(uns, vdir, {**card, "version": version, "kind": "unsupervised"})  # phase 5 of the next run
    second = detection.run(settings)
    assert second.model_versions["unsupervised"] == version
    unknown = int((found["kind"] == "unknown").sum())
    assert unknown > 0 and second.already_alerted == unknown and second.new_alerts == 0
    assert len(AlertStore(settings.alerts_db).alerts()) == len(found)
    assert f"{unknown:,} connections already alerted by an earlier model version" in second.summary()


def test_detection_uses_the_supervised_cards_threshold_unless_configured(deployment, trained, scan):
    """No ``detection.supervised_threshold`` in the config: the card's calibrated threshold decides."""
    from watchtower_lib import detection, models
    from watchtower_lib.config import load

    sup, card = trained[0]
    proba = models.malicious_proba(sup, scan)
    strict = float(np.quantile(proba, 0.99))
    shutil.rmtree(deployment / "models" / "supervised")
    version, vdir = models.new_version(deployment / "models", "supervised")
    models.save(sup, vdir, {**card, "version": version, "kind": "supervised", "threshold": strict})
    settings = load(_config(deployment, detection=["window_days: 7"]), env={})
    assert settings.detection.supervised_threshold is None
    known = detection.run(settings, index=False).alerts.query("kind == 'known'")
    assert len(known) == int((proba >= strict).sum()) > 0
    assert known["score"].min() >= strict
