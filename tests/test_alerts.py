"""Alerts and incidents on real captures: deterministic ids, severities, explanations, one incident per scan."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from watchtower_lib import alerts, zeek
from watchtower_lib.errors import ModelError

SCAN = "scenarios/stratosphere-sdt/002-nmap-port-scanning/conn.log"
IOT23 = "labelled/iot23/CTU-IoT-Malware-Capture-34-1/conn.log.labeled.gz"
NORMAL40 = "labelled/stratosphere-sdt/008-ctu-normal-40-day1/conn.log.labeled"


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
    """The forest trained on IoT-23 34-1 (Mirai), the isolation forest on capture 008's benign traffic."""
    from watchtower_lib import labels, models

    iot = labels.read_labelled(shared_data / IOT23)
    iot = iot[iot["label"] != "unknown"]
    supervised = models.build_supervised().fit(iot, iot["label"])
    normal = labels.read_labelled(shared_data / NORMAL40)
    unsupervised = models.build_unsupervised().fit(normal[normal["label"] == "benign"])
    threshold = float(np.quantile(models.anomaly_score(unsupervised, normal[normal["label"] == "benign"]), 0.99))
    return (supervised, {"version": "sup-test-1"}), (unsupervised, {"version": "uns-test-1",
                                                                   "threshold": threshold})


def test_detect_is_deterministic_and_explained(trained, scan):
    sup, uns = trained
    first = alerts.detect(scan, sup, uns)
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
    old = alerts.detect(scan, (sup, card), None)
    new = alerts.detect(scan, (sup, {"version": "sup-test-2"}), None)
    assert len(old) == len(new) and not set(old["id"]) & set(new["id"])
    assert (old["uid"].to_numpy() == new["uid"].to_numpy()).all()


def test_either_model_may_be_missing(trained, scan):
    sup, uns = trained
    assert set(alerts.detect(scan, sup, None)["kind"]) <= {"known"}
    only_unknown = alerts.detect(scan, None, uns)
    assert set(only_unknown["kind"]) == {"unknown"}
    nothing = alerts.detect(scan, None, None)
    assert nothing.empty and list(nothing.columns) == alerts.ALERT_COLUMNS
    with pytest.raises(ModelError, match="threshold"):
        alerts.detect(scan, None, (uns[0], {"version": "no-threshold"}))
    everything = alerts.detect(scan, None, uns, anomaly_threshold=0.0)
    assert len(everything) == len(scan)


def test_the_scan_flagged_by_the_models_is_a_handful_of_incidents(trained, scan):
    sup, uns = trained
    found = alerts.detect(scan, sup, uns)
    incidents = alerts.group_incidents(found, 60)
    assert len(incidents) <= 4 < len(found)  # at most one per kind and gap, not one per connection
    biggest = incidents.sort_values("count").iloc[-1]
    assert biggest.src_ip == "172.16.1.11" and biggest.scope == "fan-out"
