"""Explorer filtering and drill-down on a real multi-log capture (CTU-Normal-43 day 1).

Alerts: the capture's labelled malicious flows (known) and a real IsolationForest's top 1%
(unknown), built by ``test_report.build_alerts``. References are plain python over the logs.
"""
from __future__ import annotations

import pandas as pd
import pytest
from test_report import build_alerts

from watchtower_lib import explore
from watchtower_lib.labels import read_labelled
from watchtower_lib.zeek import read_log

CAPTURE = "labelled/stratosphere-sdt/011-ctu-normal-43-day1"
HOST = "147.32.83.165"


@pytest.fixture(scope="module")
def capture(shared_data):
    folder = shared_data / CAPTURE
    logs = {t: read_log(folder / f"{t}.log.labeled") for t in explore.LOG_TYPES}
    alerts = build_alerts(read_labelled(folder / "conn.log.labeled"), sensor="ctu43")
    return logs, alerts


def _uids(frame):
    return [str(u) for u in frame["uid"]]


def test_filter_alerts(capture):
    _, alerts = capture
    assert len(explore.filter_alerts(alerts)) == len(alerts) == 3951 + 91
    known = explore.filter_alerts(alerts, kind="known", family="External-Attack-to-Device")
    assert len(known) == 3951  # the labelled malicious flows
    unknown = explore.filter_alerts(alerts, kind="unknown", min_score=0.6)
    assert len(unknown) == sum(1 for k, s in zip(alerts["kind"], alerts["score"]) if k == "unknown" and s >= 0.6)
    assert unknown["score"].is_monotonic_decreasing
    start, end = pd.Timestamp("2022-06-13 04:00", tz="UTC"), pd.Timestamp("2022-06-13 06:00", tz="UTC")
    window = explore.filter_alerts(alerts, start=start, end=end, host=HOST, kind="(any)")
    expected = sum(1 for ts, s, d in zip(alerts["ts"], alerts["src_ip"], alerts["dst_ip"])
                   if start <= ts < end and HOST in (s, d))
    assert len(window) == expected > 0
    assert explore.filter_alerts(alerts, start="2022-06-13 04:00", end="2022-06-13 06:00", host=HOST).equals(window)
    assert explore.filter_alerts(alerts, host="10.1.2.3").empty
    assert explore.filter_alerts(alerts.head(0)).empty


def test_records_for_uid_across_logs(capture):
    logs, alerts = capture
    both = sorted(set(_uids(logs["http"])) & set(_uids(alerts)))
    assert both  # some alerted connections carried HTTP
    uid = both[0]
    records = explore.records_for_uid(logs, uid)
    assert list(records) == ["conn", "dns", "http", "ssl"]
    for log_type, frame in records.items():
        assert len(frame) == _uids(logs[log_type]).count(uid)
    assert len(records["conn"]) == 1 and len(records["http"]) >= 1
    ssl_uid = sorted(set(_uids(logs["ssl"])) & set(_uids(logs["conn"])))[0]
    ssl_records = explore.records_for_uid(logs, ssl_uid, ["conn", "ssl", "x509"])
    assert len(ssl_records["ssl"]) == _uids(logs["ssl"]).count(ssl_uid) >= 1
    assert ssl_records["x509"].empty  # a log type we do not have: empty, not an error


def test_host_timeline(capture):
    logs, alerts = capture
    conn = logs["conn"]
    start, end = pd.Timestamp("2022-06-13 00:00", tz="UTC"), pd.Timestamp("2022-06-13 12:00", tz="UTC")
    tl = explore.host_timeline(conn, HOST, start=start, end=end, alerts=alerts)
    assert len(tl) == 12 and tl.index[0] == start
    out = sum(1 for ts, o in zip(conn["ts"], conn["id.orig_h"]) if start <= ts < end and o == HOST)
    inn = sum(1 for ts, r in zip(conn["ts"], conn["id.resp_h"]) if start <= ts < end and r == HOST)
    assert tl["connections_out"].sum() == out and tl["connections_in"].sum() == inn
    # bytes the host sent: as originator its orig_bytes, as responder its resp_bytes
    sent = sum(int(ob) if o == HOST else int(rb)
               for ts, o, r, ob, rb in zip(conn["ts"], conn["id.orig_h"], conn["id.resp_h"],
                                           conn["orig_bytes"].fillna(0), conn["resp_bytes"].fillna(0))
               if start <= ts < end and HOST in (o, r))
    assert tl["bytes_out"].sum() == sent
    n_alerts = sum(1 for ts, s, d in zip(alerts["ts"], alerts["src_ip"], alerts["dst_ip"])
                   if start <= ts < end and HOST in (s, d))
    assert tl["alerts"].sum() == n_alerts
    fig = explore.host_timeline_figure(tl, HOST, marker=start)
    assert list(fig.data[0].y) == list(tl["connections_out"])
    assert explore.host_timeline(conn, "10.9.9.9").empty


def test_explorer_widgets_filter_and_drill_down(capture):
    logs, alerts = capture
    ex = explore.AnomalyExplorer(alerts, logs, max_rows=50)
    assert ex.count.value.startswith(f"<b>{len(alerts)}</b>")
    assert 'class="dataframe wt-alert-table"' in ex.table.value and len(ex.picker.options) == 50
    ex.kind.value = "unknown"
    assert ex.count.value.startswith("<b>91</b>")
    ex.kind.value = "(any)"
    ex.host.value = HOST
    ex.min_score.value = 0.99
    assert len(ex.filtered()) == len(explore.filter_alerts(alerts, host=HOST, min_score=0.99))
    ex.min_score.value = 0.0
    ex.host.value = ""
    uid = sorted(set(_uids(logs["http"])) & set(_uids(alerts)))[0]
    alert_id = alerts.loc[alerts["uid"] == uid, "id"].iloc[0]
    records = ex.select(alert_id)
    assert ex.selected == alert_id and len(records["http"]) == _uids(logs["http"]).count(uid)
    assert uid in ex.records.value and "wt-http" in ex.records.value
    assert ex.timeline.outputs[0]["data"]["application/vnd.plotly.v1+json"]["data"]
    row = alerts.set_index("id").loc[alert_id]
    assert ex.timeline_data["alerts"].sum() >= 1 and row["src_ip"] in ex.figure.layout.title.text
    # picking in the list drills down the same way
    ex.picker.value = ex.picker.options[0][1]
    assert ex.selected == ex.picker.options[0][1]
    with pytest.raises(KeyError, match="no alert"):
        ex.select("nope")
    # no hidden state: a second explorer starts clean
    assert explore.AnomalyExplorer(alerts, logs).selected is None


def test_explorer_over_the_store(capture, shared_data, tmp_path):
    """The same drill-down when the logs come from the Parquet store instead of memory."""
    from watchtower_lib import store

    logs, alerts = capture
    folder = shared_data / CAPTURE
    store.ingest([folder / f"{t}.log.labeled" for t in explore.LOG_TYPES], tmp_path / "store")
    source = explore.LogSource(tmp_path / "store")
    uid = sorted(set(_uids(logs["http"])) & set(_uids(alerts)))[0]
    ts = alerts.loc[alerts["uid"] == uid, "ts"].iloc[0]
    from_store = explore.records_for_uid(source, uid, around=ts)
    in_memory = explore.records_for_uid(logs, uid)
    assert {k: len(v) for k, v in from_store.items()} == {k: len(v) for k, v in in_memory.items()}
    assert from_store["conn"].loc[0, "id.orig_h"] == in_memory["conn"].loc[0, "id.orig_h"]
    ex = explore.AnomalyExplorer(alerts, tmp_path / "store")
    alert_id = alerts.loc[alerts["uid"] == uid, "id"].iloc[0]
    assert len(ex.select(alert_id)["http"]) == len(in_memory["http"])


def test_accessor_is_opt_in_and_delegates(capture):
    logs, alerts = capture
    explore.register_accessor("wt_test")
    explore.register_accessor("wt_test")  # twice is harmless
    assert alerts.wt_test.filter(kind="unknown").equals(explore.filter_alerts(alerts, kind="unknown"))
    assert logs["conn"].wt_test.timeline(HOST).equals(explore.host_timeline(logs["conn"], HOST))
    assert not hasattr(pd.DataFrame, "wt")  # importing explore registered nothing


def test_explorer_without_alerts(capture):
    logs, alerts = capture
    ex = explore.AnomalyExplorer(alerts.head(0), logs)
    assert ex.count.value == "<b>0</b> of 0 alerts" and "no rows" in ex.table.value
    assert ex.picker.options == () and len(ex.time_range.options) == 2
