"""Report figures and tables on real captures.

The alerts here are built from real data without the models: ``known`` alerts are the
capture's ground-truth malicious flows (family = Stratosphere's detailed label, score 1),
``unknown`` alerts come from a real IsolationForest fitted on the capture.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_behaviour import IOT, NORMAL43, halves, read_conn

from watchtower_lib import behaviour, report
from watchtower_lib.labels import read_labelled

ALERT_COLS = ["id", "ts", "sensor", "src_ip", "dst_ip", "dst_port", "proto", "service", "kind", "family",
              "score", "severity", "explanation", "uid", "model_version"]
FEATURES = ["orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts"]


def _labels(df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    label = df["label"].astype("string").str.lower()
    name = next(c for c in ("detail", "detailed-label", "detailedlabel") if c in df.columns)
    detail = df[name]
    return label, detail.astype("string")


def build_alerts(df: pd.DataFrame, *, sensor: str = "iot23") -> pd.DataFrame:
    """Known alerts from the labels, unknown ones from an IsolationForest (top 1% of scores)."""
    from sklearn.ensemble import IsolationForest

    label, detail = _labels(df)
    base = pd.DataFrame({
        "ts": df["ts"], "sensor": sensor, "src_ip": df["id.orig_h"].astype("string"),
        "dst_ip": df["id.resp_h"].astype("string"), "dst_port": df["id.resp_p"], "proto": df["proto"],
        "service": df["service"], "uid": df["uid"].astype("string"),
    })
    bad = (label == "malicious").to_numpy()
    known = base[bad].assign(kind="known", family=detail[bad].to_numpy(), score=1.0, severity="critical",
                             explanation="labelled malicious by Stratosphere", model_version="labels")
    x = np.log1p(df[FEATURES].astype("Float64").fillna(0).to_numpy(dtype=float))
    scores = -IsolationForest(n_estimators=50, random_state=0).fit(x).score_samples(x)
    threshold = float(np.quantile(scores, 0.99))
    hit = scores >= threshold
    z = (x[hit] - x.mean(axis=0)) / (x.std(axis=0) + 1e-9)
    expl = [f"{FEATURES[i]} unusual (z={row[i]:+.1f})" for row, i in zip(z, np.abs(z).argmax(axis=1))]
    margin = (scores[hit] - threshold) / (1 - threshold)
    unknown = base[hit].assign(kind="unknown", family=pd.NA, score=scores[hit],
                               severity=np.where(margin >= 0.5, "high", np.where(margin >= 0.2, "medium", "low")),
                               explanation=expl, model_version="iforest-test")
    out = pd.concat([known, unknown], ignore_index=True)
    out["id"] = [f"a{i}" for i in range(len(out))]
    return out[ALERT_COLS].sort_values("ts", ignore_index=True)


@pytest.fixture(scope="module")
def iot(shared_data):
    df = read_labelled(shared_data / IOT)
    return df, build_alerts(df)


def _no_data(fig) -> bool:
    return any(a.text == report.NO_DATA for a in fig.layout.annotations)


def test_period_figures_and_week_over_week(iot):
    df, alerts = iot
    a, b = halves(df)
    first = df[(df["ts"] >= a[0]) & (df["ts"] < a[1])]
    second = df[(df["ts"] >= b[0]) & (df["ts"] < b[1])]
    now = report.period_figures(second, alerts, alerts.head(3))
    before = report.period_figures(first)
    assert now["connections"] == len(second) == 18225
    assert now["bytes"] == float(second["orig_bytes"].fillna(0).sum() + second["resp_bytes"].fillna(0).sum())
    assert now["hosts"] == 1 and before["hosts"] == 2 and now["incidents"] == 3 and before["alerts"] == 0
    public = report.period_figures(df, internal_networks=["10.0.0.0/8"])
    assert public["hosts"] == 0
    table = report.week_over_week(now, before).set_index("metric")
    assert list(table.index) == list(report.METRICS)
    assert table.loc["connections", "change_pct"] == pytest.approx(100 * (18225 - 4920) / 4920)
    assert pd.isna(table.loc["alerts", "change_pct"])  # no baseline: 0 alerts before
    assert table.loc["hosts", "change"] == -1
    assert report.week_over_week(now, None)["previous_period"].isna().all()
    fig = report.week_over_week_figure(now, before)
    assert len(fig.data) == 5 and fig.layout.width == report.WIDTH
    assert list(fig.data[0].y) == [4920, 18225]
    assert "+270%" in fig.layout.annotations[0].text


def test_alert_tables(iot):
    df, alerts = iot
    label, detail = _labels(df)
    families = report.attack_families(alerts).set_index("family")
    # the label counts of capture 34-1 (PROVENANCE.md)
    assert families["alerts"].to_dict() == {"DDoS": 14394, "C&C": 6706, "PartOfAHorizontalPortScan": 122}
    assert families.index[0] == "DDoS" and families.loc["C&C", "sources"] == 1
    top = report.top_alerted_hosts(alerts, n=5)
    assert top.loc[0, "host"] == "192.168.1.195"
    assert top.loc[0, "known"] == int(((label == "malicious") & (df["id.orig_h"] == "192.168.1.195")).sum())
    assert top.loc[0, "alerts"] == top.loc[0, "known"] + top.loc[0, "unknown"]
    assert top.loc[0, "max_severity"] == "critical"
    unknown = report.unknown_anomalies(alerts, n=7)
    assert len(unknown) == 7 and unknown["score"].is_monotonic_decreasing
    assert unknown["explanation"].str.contains("unusual").all()
    assert unknown.loc[0, "score"] == alerts.loc[alerts["kind"] == "unknown", "score"].max()


def test_alert_figures(iot):
    df, alerts = iot
    fig = report.alerts_over_time(alerts, freq="h")
    assert sum(sum(t.y) for t in fig.data) == len(alerts)
    assert [t.name for t in fig.data][-1] == "critical"  # stacked last = drawn on top
    hourly = pd.to_datetime(alerts["ts"], utc=True).dt.floor("h").value_counts()
    totals = pd.Series(np.sum([np.asarray(t.y) for t in fig.data], axis=0), index=pd.DatetimeIndex(fig.data[0].x))
    assert totals.max() == hourly.max()
    day = pd.Timestamp("2018-12-21", tz="UTC")
    fixed = report.alerts_over_time(alerts, freq="h", by="kind", start=day, end=day + pd.Timedelta(days=2))
    assert len(fixed.data[0].x) == 48 and {t.name for t in fixed.data} == {"known", "unknown"}
    hosts = report.top_hosts_figure(alerts)
    assert list(hosts.data[0].y)[-1] == "192.168.1.195"
    fams = report.families_figure(alerts)
    assert list(fams.data[0].x) == [122, 6706, 14394]


def test_behaviour_and_drift_figures(shared_data):
    df = read_conn(shared_data / NORMAL43)
    a, b = halves(df)
    cmp = behaviour.compare_periods(df, a, b, internal_networks=["147.32.0.0/16"])
    fig = report.behaviour_figure(cmp)
    assert list(fig.data[0].y) == ["147.32.83.165"]
    assert "291 new destinations" in fig.data[0].hovertext[0]
    assert report.behaviour_changes(cmp).loc[0, "host"] == "147.32.83.165"
    prof = report.hour_profile_figure(cmp, "147.32.83.165")
    assert sum(prof.data[0].y) + sum(prof.data[1].y) == len(df[df["id.orig_h"] == "147.32.83.165"])
    drift = report.drift_figure(cmp.drift)
    assert list(drift.data[0].x) == list(cmp.drift.dropna(subset=["psi"])["feature"])
    assert _no_data(report.hour_profile_figure(cmp, "10.9.9.9"))
    top = report.hour_profile_figure(cmp)  # no host: the one that changed most
    assert top.layout.title.text.endswith(": 147.32.83.165") and list(top.data[1].y) == list(prof.data[1].y)
    assert report.hosts_changed(cmp) == len(cmp.ranked(len(cmp.hosts))) == 1
    same = behaviour.compare_periods(df, a, a, internal_networks=["147.32.0.0/16"])  # a period against itself
    assert len(same.hosts) == 1 and report.hosts_changed(same) == 0 and report.hosts_changed(None) == 0


def test_model_health():
    cards = [
        {"kind": "supervised", "version": "20261130T0600-ab12", "trained_at": "2026-11-30T06:00:00Z",
         "training_files": ["conn.log.labeled.gz"], "rows": 23145, "threshold": 0.5,
         "metrics": {"f1": 0.97, "confusion": [[1, 2], [3, 4]]}},
        {"kind": "unsupervised", "version": "v2", "trained_at": "2026-12-02T00:00:00+00:00", "rows": 9048},
    ]
    table = report.model_health(cards, now="2026-12-03T12:00:00Z")
    assert list(table["age_days"]) == [3.2, 1.5]
    assert table.loc[0, "metric:f1"] == 0.97 and "metric:confusion" not in table
    assert table.loc[0, "training_files"] == "conn.log.labeled.gz" and pd.isna(table.loc[1, "threshold"])
    assert report.model_health(None).empty
    # the nested form models.train_* writes
    nested = {"kind": "unsupervised", "version": "v3", "threshold": 0.61, "saved_at": "2026-12-01T00:00:00+00:00",
              "training": {"files": [{"path": f"store/conn/date=2026-11-2{d}/x{d}.parquet", "sha256": "0"}
                                     for d in range(7)],
                           "rows": 9000, "start": "2026-11-24T00:00:00+00:00", "end": "2026-12-01T00:00:00+00:00"},
              "metrics": {"protocol": "leave-one-capture-out", "pooled": {"f1": 0.9, "recall": 0.8},
                          "per_capture": {"a": {"f1": 0.5}}}}
    row = report.model_health(nested, now="2026-12-03T00:00:00Z").iloc[0]
    assert row["age_days"] == 2.0 and row["rows"] == 9000
    assert row["training_files"] == "x0.parquet, x1.parquet, x2.parquet, x3.parquet, x4.parquet (+2 more)"
    assert row["training_period"].startswith("2026-11-24") and row["metric:pooled.f1"] == 0.9
    assert "metric:per_capture.a.f1" not in row.index


@pytest.mark.parametrize("make", [
    lambda e: report.alerts_over_time(e), lambda e: report.top_hosts_figure(e),
    lambda e: report.families_figure(e), lambda e: report.behaviour_figure(None),
    lambda e: report.drift_figure(pd.DataFrame(columns=["feature", "psi"])),
    lambda e: report.week_over_week_figure({}, None), lambda e: report.hour_profile_figure(None, "x"),
])
def test_empty_input_says_no_data(make):
    empty = pd.DataFrame(columns=ALERT_COLS)
    fig = make(empty)
    assert _no_data(fig) and fig.layout.width == report.WIDTH and fig.layout.height == report.HEIGHT
    assert report.top_alerted_hosts(empty).empty and report.attack_families(empty).empty
    assert report.unknown_anomalies(empty).empty


def test_setup_notebook_inlines_plotly_js_offline(tmp_path):
    """Executed in a real kernel, the figure output is HTML with plotly.js inlined, no CDN."""
    import nbformat
    from nbclient import NotebookClient

    if not shutil.which("python3"):
        pytest.skip("no python3 for the kernel")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import watchtower_lib.report as r\nr.setup_notebook()"),
        nbformat.v4.new_code_cell("r.empty_figure('t')"),
        nbformat.v4.new_code_cell("r.empty_figure('u')"),
        nbformat.v4.new_code_cell("import pandas as pd\npd.DataFrame({'explanation': ['hist_r_f=1 ' * 12]})"),
    ]
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    table = nb.cells[3].outputs[0]["data"]["text/html"]
    assert "hist_r_f=1 " * 11 + "hist_r_f=1" in table and "..." not in table  # a long cell is shown whole
    outputs = [o for cell in nb.cells[1:3] for o in cell.outputs]
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    figures = [h for h in html if "Plotly.newPlot" in h]
    bundles = [h for h in html if len(h) > 1_000_000]  # plotly.js itself, several MB
    assert len(figures) == 2 and len(bundles) == 1  # the library inlined once, before the first figure
    text = json.dumps([o for cell in nb.cells for o in cell.outputs])
    # (plotly.js itself mentions https://cdn.plot.ly/un/ as its default topojson URL for maps)
    assert "cdn.plot.ly/plotly" not in text and 'src=\\"http' not in text  # nor MathJax from cdnjs
    assert "https://cdn" not in "".join(figures)


def test_setup_notebook_shows_frames_for_reading_in_a_real_kernel():
    """In a kernel after setup_notebook, a DataFrame of the real nmap scan shows its times to the second
    (no "+00:00"), durations in seconds and an en dash for unset values instead of <NA>/NaN/NaT; the
    frame itself keeps every value."""
    import nbformat
    from nbclient import NotebookClient

    from watchtower_lib import zeek

    conn = zeek.read_log(SCAN_LOG)
    rows = conn[conn["service"].isna() & conn["orig_bytes"].notna()].head(3)
    assert len(rows) == 3 and rows["ts"].dt.microsecond.ne(0).any()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import watchtower_lib as wt\nwt.report.setup_notebook()"),
        nbformat.v4.new_code_cell(f"df = wt.read_log({str(SCAN_LOG)!r}).loc[{list(rows.index)!r}]\n"
                                  "df['score'] = [0.728408, 19.653011, 17752.0]\ndf"),
        nbformat.v4.new_code_cell("print(df['ts'].iloc[0].microsecond, df['score'].iloc[0])"),
    ]
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    html = nb.cells[1].outputs[0]["data"]["text/html"]
    cells = re.findall(r"<td>(.*?)</td>", html)
    for ts, duration in zip(rows["ts"], rows["duration"]):
        assert f"<td>{ts:%Y-%m-%d %H:%M:%S}</td>" in html
        assert f"<td>{duration.total_seconds():.4g} s</td>" in html
    assert "+00:00" not in html and "&lt;NA&gt;" not in html and "NaN" not in html and "NaT" not in html
    assert cells.count("\u2013") >= 3  # service is unset in every row
    assert ["0.7284", "19.65", "17752"] == [c for c in cells if c in ("0.7284", "19.65", "17752")]
    assert nb.cells[2].outputs[0]["text"].split() == [str(rows["ts"].iloc[0].microsecond), "0.728408"]


def test_frame_html_leaves_long_frames_to_pandas():
    import pandas as pd

    from watchtower_lib import zeek

    conn = zeek.read_log(SCAN_LOG)
    assert report.frame_html(conn) is None  # 4,504 rows: pandas' own truncated view
    assert "<table" in report.frame_html(conn.head(pd.get_option("display.max_rows")))


# ------------------------------------------------------------------ what the report notebook loads
SCAN_LOG = Path(__file__).resolve().parents[1] / "data/logs/stratosphere/002-nmap-port-scanning/conn.log"


@pytest.fixture(scope="module")
def scan_settings(tmp_path_factory):
    """A store holding the real nmap scan (data/logs), its alerts and incidents in an alert store."""
    from test_alert_store import alerts_from_conn

    from watchtower_lib import alerts as alerts_mod
    from watchtower_lib import config, store, zeek
    from watchtower_lib.alert_store import AlertStore

    home = tmp_path_factory.mktemp("scan")
    (home / "watchtower.yml").write_text("store_dir: store\nalerts_db: alerts.sqlite\nmodels_dir: models\n")
    settings = config.load(home / "watchtower.yml", env={})
    store.ingest(SCAN_LOG, settings.store_dir)
    found = alerts_from_conn(zeek.read_log(SCAN_LOG), threshold=0.55)
    db = AlertStore(settings.alerts_db)
    db.upsert_alerts(found)
    db.upsert_incidents(alerts_mod.group_incidents(found, 10))
    return settings


def test_period_data_splits_one_read_at_the_period_start(scan_settings):
    from watchtower_lib import zeek
    from watchtower_lib.alert_store import AlertStore
    from watchtower_lib.periods import Period

    start, end = pd.Timestamp("2022-09-29T15:30:00Z"), pd.Timestamp("2022-09-29T16:20:00Z")
    data = report.period_data(scan_settings, Period(start.to_pydatetime(), end.to_pydatetime()))
    assert (data.previous.start, data.previous.end) == (start - pd.Timedelta(50, "min"), start)
    conn = zeek.read_log(SCAN_LOG)
    now = conn[(conn["ts"] >= start) & (conn["ts"] < end)]
    before = conn[(conn["ts"] >= start - pd.Timedelta(50, "min")) & (conn["ts"] < start)]
    assert len(data.conn) == len(conn) == 4504  # the whole scan falls in the two periods
    assert len(data.conn_now) == len(now) and len(data.conn_before) == len(before) > 0
    assert sorted(data.conn_now["uid"]) == sorted(now["uid"]) and data.conn_before["ts"].max() < start
    db = AlertStore(scan_settings.alerts_db)
    every = db.alerts()
    assert len(data.alerts) == int(((every["ts"] >= start) & (every["ts"] < end)).sum()) > 0
    assert len(data.alerts) + len(data.alerts_before) == len(every)
    incidents = db.incidents()
    overlap = incidents[(incidents["last_seen"] >= start) & (incidents["first_seen"] < end)]
    assert data.incidents["incident_id"].tolist() == overlap["incident_id"].tolist()
    spanning = set(data.incidents["incident_id"]) & set(data.incidents_before["incident_id"])
    assert len(incidents) == 2 and len(data.incidents_before) == 2 and len(spanning) == 1  # in both periods
    assert data.figures == report.period_figures(now, data.alerts, overlap,
                                                 internal_networks=scan_settings.internal_networks)
    assert data.figures["connections"] == len(now) and data.figures["hosts"] == 1  # the scanner, 172.16.1.11
    assert data.figures_before["connections"] == len(before) and data.figures_before["incidents"] == len(
        data.incidents_before)
    empty = report.period_data(scan_settings, Period(dt.datetime(2030, 1, 7, tzinfo=dt.timezone.utc),
                                                     dt.datetime(2030, 1, 14, tzinfo=dt.timezone.utc)))
    assert empty.conn.empty and empty.alerts.empty and empty.incidents.empty
    assert empty.figures == dict.fromkeys(report.METRICS, 0.0)


def test_retraining_change_and_latest_cards(scan_settings, tmp_path):
    from watchtower_lib import models

    assert report.latest_cards(tmp_path) == [] and report.model_health(report.latest_cards(tmp_path)).empty
    none = report.latest_retraining(tmp_path)
    assert (none.version, none.previous, none.largest_shift) == (None, None, None) and none.drift.empty
    assert none.summary() == "no model of this kind has been trained yet"
    kwargs = {"models_dir": tmp_path / "models", "target_alert_rate": 0.02}
    first = models.retrain_unsupervised(scan_settings.store_dir, "2022-09-29T15:30:00Z", 1, **kwargs)
    alone = report.retraining_change(first, [])
    assert alone.summary() == f"{first.version} is the first version: nothing to compare with yet"
    assert report.latest_retraining(tmp_path / "models").version == first.version
    second = models.retrain_unsupervised(scan_settings.store_dir, "2022-09-30", 1, **kwargs)
    change = report.latest_retraining(tmp_path / "models")
    direct = models.compare_versions(first, second)
    assert (change.version, change.previous) == (second.version, first.version)
    assert change.summary() == direct.summary() and first.version in change.summary()
    assert change.comparison.training_rows == (first.card["training"]["rows"], second.card["training"]["rows"])
    assert change.comparison.training_rows[0] < change.comparison.training_rows[1] == 4504
    assert change.largest_shift == float(direct.drift["shift"].max()) > 0
    assert change.drift["feature"].tolist() == direct.drift["feature"].tolist()
    assert report.retraining_change(second, [first]).summary() == change.summary()
    cards = report.latest_cards(tmp_path / "models")
    assert [c["version"] for c in cards] == [second.version]  # no supervised model: left out
    assert report.model_health(cards).loc[0, "rows"] == 4504


def test_constant_columns_and_correlation_figure():
    from watchtower_lib import features, zeek

    table = features.build_features().fit_transform(zeek.read_log(SCAN_LOG))
    constant = report.constant_columns(table)
    assert constant and set(constant) < set(table.columns)
    assert (table[constant].nunique() == 1).all() and (table.drop(columns=constant).nunique() > 1).all()
    fig = report.correlation_figure(table)
    varying = [c for c in table.columns if c not in constant]
    assert list(fig.data[0].x) == varying and fig.layout.width == report.WIDTH
    assert np.allclose(np.diag(np.asarray(fig.data[0].z, dtype=float)), 1.0)
    assert _no_data(report.correlation_figure(table[constant]))


def test_phase_table_lists_each_recorded_phase(tmp_path):
    from watchtower_lib import runner

    runner.record_phase(tmp_path, "02_parse", rows=13898, files_ingested=44)
    runner.record_phase(tmp_path, "06_detect", rows=4504, alerts=97, model_version={"supervised": "v1"})
    table = report.phase_table(runner.read_phases(tmp_path))
    assert table.columns.tolist() == ["phase", "seconds", "rows", "alerts", "model version"]
    assert table["phase"].tolist() == ["02_parse", "06_detect"] and table["rows"].tolist() == [13898, 4504]
    assert table.loc[1, "model version"] == {"supervised": "v1"} and pd.isna(table.loc[0, "alerts"])
    assert report.phase_table({}).empty and len(report.phase_table({}).columns) == 5


def test_baseline_drift_names_the_behaviour_the_model_has_not_seen(tmp_path, shared_data):
    """An anomaly model trained on capture 011's benign traffic: that traffic is exactly like its
    training data (0 everywhere); an nmap scan is unlike it above all in the ports per pair and per
    host; with no model saved, the table is empty."""
    from watchtower_lib import models, zeek

    assert report.baseline_drift(tmp_path / "none", pd.DataFrame({"ts": []})).empty
    c011 = read_labelled(shared_data / NORMAL43)
    benign = c011[c011["label"] == "benign"]
    version, folder = models.new_version(tmp_path / "models", "unsupervised")
    models.save(models.build_unsupervised(0).fit(benign), folder, {"kind": "unsupervised", "version": version})
    itself = report.baseline_drift(tmp_path / "models", benign, n=200)
    assert len(itself) == len(models.feature_names(models.load(folder))) and itself["unlike_training"].max() == 0
    scan = zeek.read_log(shared_data / "scenarios/stratosphere-sdt/002-nmap-port-scanning/conn.log")
    drift = report.baseline_drift(tmp_path / "models", scan, n=5)
    assert drift["model"].unique().tolist() == [f"unsupervised {version}"]
    assert drift["feature"].iloc[0] == "pair_ports_log" and drift["unlike_training"].iloc[0] > 0.95
    assert {"src_ports_3600s", "src_ports_60s"} <= set(drift["feature"])
    top = drift.iloc[0]
    assert top["median_period"] > top["q75_training"]  # the scan's median lies above the training's middle half
