"""watchtower_lib.es against a real Elasticsearch node (scripts/es-node), on real Zeek logs.

The node: $WATCHTOWER_ES_URL if set (CI starts one), else this session starts its
own with scripts/es-node on a free port and stops it at the end. Each test
works under its own index prefix and deletes it afterwards.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ES_URL, ROOT, require
from watchtower_lib import es_mapping
from watchtower_lib.config import load
from watchtower_lib.errors import ConfigError, IntegrationError, MissingDependencyError

SDT = "labelled/stratosphere-sdt"
CONN_43 = f"{SDT}/011-ctu-normal-43-day1/conn.log.labeled"  # 9,048 rows, 2022-06-12 (Sun) .. 06-13 (Mon)
CONN_40 = f"{SDT}/008-ctu-normal-40-day1/conn.log.labeled"  # 5,663 rows
WRCCDC = "multi/wrccdc-2018/zeek-tsv"
NMAP_CONN = ROOT / "data" / "logs" / "stratosphere" / "002-nmap-port-scanning" / "conn.log"  # 4,504 rows


def _elasticsearch_importable() -> bool:
    try:
        import elasticsearch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def es_url(tmp_path_factory: pytest.TempPathFactory):
    require("ES", _elasticsearch_importable(), "the client: pip install 'watchtower-zeek[es]'")
    url = ES_URL  # conftest keeps it out of os.environ (hermetic kernels)
    if url:
        yield url.rstrip("/")
        return
    state = tmp_path_factory.mktemp("es-node-state")
    script = ROOT / "scripts" / "es-node"
    proc = subprocess.run([str(script), "start", "--state", str(state)], capture_output=True, text=True,
                          timeout=600)
    require("ES", proc.returncode == 0,
            f"scripts/es-node start failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    try:
        yield proc.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(script), "stop", "--state", str(state)], capture_output=True, timeout=120)


@pytest.fixture
def settings(es_url):
    """Settings pointing at the node, with an index prefix of this test's own."""
    prefix = f"wt-test-{uuid.uuid4().hex[:8]}"
    s = load(env={"WATCHTOWER_ES_URL": es_url, "WATCHTOWER_ELASTICSEARCH__INDEX_PREFIX": prefix})
    from watchtower_lib import es

    client = es.client(s)
    es.install_templates(client, settings=s)
    yield s
    client.indices.delete(index=f"{prefix}-*", ignore_unavailable=True, allow_no_indices=True)
    client.indices.delete_index_template(name=f"{prefix}-*")
    client.cluster.delete_component_template(name=f"{prefix}-ecs-base")


@pytest.fixture(scope="module")
def conn43(shared_data: Path) -> pd.DataFrame:
    from watchtower_lib.zeek import read_log

    return read_log(shared_data / CONN_43)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in df.columns if not isinstance(df[c].dtype, pd.ArrowDtype) and df[c].dtype != object]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def test_templates_map_ecs_types(settings):
    from watchtower_lib import es

    client = es.client(settings)
    prefix = settings.elasticsearch.index_prefix
    client.indices.create(index=f"{prefix}-zeek-conn-2000.01")
    props = client.indices.get_field_mapping(
        index=f"{prefix}-zeek-conn-2000.01",
        fields="source.ip,destination.port,event.duration,network.transport,zeek.conn.history")
    mapping = props[f"{prefix}-zeek-conn-2000.01"]["mappings"]
    types = {name: next(iter(body["mapping"].values()))["type"] for name, body in mapping.items()}
    assert types == {"source.ip": "ip", "destination.port": "long", "event.duration": "long",
                     "network.transport": "keyword", "zeek.conn.history": "keyword"}
    names = {t["name"] for t in client.indices.get_index_template(name=f"{prefix}-*")["index_templates"]}
    assert {f"{prefix}-zeek-{lt}" for lt in ("conn", "dns", "http", "ssl", "notice", "weird")} < names
    assert f"{prefix}-alerts" in names


def test_conn_round_trip_and_idempotence(settings, conn43):
    from watchtower_lib import es

    first = es.index_logs(conn43, "conn", settings=settings, refresh=True, bulk_load=True)
    assert (first.created, first.existing, first.failed) == (len(conn43), 0, 0) == (9048, 0, 0)
    assert first.indices == [f"{settings.elasticsearch.index_prefix}-zeek-conn-2022.06"]
    # the bulk-load settings (refresh off, async translog) are undone afterwards
    index_settings = es.client(settings).indices.get_settings(index=first.indices[0], flat_settings=True)
    flat = index_settings[first.indices[0]]["settings"]
    assert flat["index.refresh_interval"] == "5s" and "index.translog.durability" not in flat
    second = es.index_logs(conn43, "conn", settings=settings, refresh=True)
    assert (second.created, second.existing, second.failed) == (0, 9048, 0)
    client = es.client(settings)
    assert client.count(index=es.index_pattern("conn", settings.elasticsearch.index_prefix))["count"] == 9048

    back = es.search_df("conn", settings=settings, page_size=1000)  # ten pages through the PIT
    assert list(back.columns) == list(conn43.columns)
    assert back["ts"].is_monotonic_increasing
    pd.testing.assert_frame_equal(_sorted(back), _sorted(conn43))

    # the document itself is ECS: event.duration in nanoseconds, ports as numbers
    row = conn43.dropna(subset=["duration"]).iloc[0]
    hit = client.search(index=first.indices[0], query={"term": {"zeek.session_id": row["uid"]}})["hits"]["hits"]
    source = hit[0]["_source"]
    assert source["event.duration"] == row["duration"].value
    assert source["source.port"] == int(row["id.orig_p"]) and source["event.dataset"] == "zeek.conn"


@pytest.mark.parametrize("path,log_type", [
    (f"{WRCCDC}/dns.log.gz", "dns"),  # vector[interval] TTLs
    (f"{SDT}/008-ctu-normal-40-day1/http.log.labeled", "http"),
    (f"{WRCCDC}/ssl.log.gz", "ssl"),
    (f"{WRCCDC}/notice.log.gz", "notice"),
    (f"{SDT}/008-ctu-normal-40-day1/weird.log.labeled", "weird"),
])
def test_other_logs_round_trip(settings, shared_data, path, log_type):
    from watchtower_lib import es
    from watchtower_lib.zeek import read_log

    df = read_log(shared_data / path).head(20_000)  # the first 20,000 rows keep CI quick
    report = es.index_logs(df, log_type, settings=settings, refresh=True)
    assert report.failed == 0, report.samples
    assert report.created + report.existing == len(df)
    back = es.search_df(log_type, settings=settings)
    assert len(back) == report.created  # identical rows share one _id
    expected = df.loc[~_duplicated(df)]
    pd.testing.assert_frame_equal(_sorted(back), _sorted(expected))


def _duplicated(df: pd.DataFrame) -> np.ndarray:
    return pd.Series([repr(tuple(row)) for row in df.itertuples(index=False)]).duplicated().to_numpy()


def test_window_fields_and_query(settings, conn43):
    from watchtower_lib import es

    es.index_logs(conn43, "conn", settings=settings, refresh=True)
    start, end = pd.Timestamp("2022-06-12T22:00:00Z"), pd.Timestamp("2022-06-13T02:00:00Z")
    got = es.search_df("conn", start=start, end=end, fields=["ts", "uid", "id.resp_p"], settings=settings)
    want = conn43.loc[(conn43["ts"] >= start) & (conn43["ts"] < end), ["ts", "uid", "id.resp_p"]]
    assert list(got.columns) == ["ts", "uid", "id.resp_p"]
    assert len(got) == len(want) > 0
    pd.testing.assert_frame_equal(_sorted(got), _sorted(want))

    smb = es.search_df("conn", query={"term": {"destination.port": 445}}, settings=settings)
    assert len(smb) == int((conn43["id.resp_p"] == 445).sum()) > 0
    text = es.search_df("conn", query="network.transport:udp AND zeek.conn.conn_state:S0", settings=settings)
    assert len(text) == int(((conn43["proto"] == "udp") & (conn43["conn_state"] == "S0")).sum())


def test_mapping_conflict_is_counted_not_raised(settings, conn43):
    from watchtower_lib import es

    rows = conn43.head(6).copy()
    rows["id.orig_h"] = rows["id.orig_h"].astype("string")
    rows.loc[rows.index[:2], "id.orig_h"] = ["not-an-ip", "300.1.2.3"]
    report = es.index_logs(rows, "conn", settings=settings, refresh=True)
    assert (report.created, report.existing, report.failed) == (4, 0, 2)
    assert sum(report.errors.values()) == 2
    assert all("source.ip" in (s["reason"] or "") for s in report.samples)
    back = es.search_df("conn", settings=settings)
    assert sorted(back["id.orig_h"]) == sorted(rows["id.orig_h"].iloc[2:])


def test_weekly_host_stats_matches_pandas(settings, shared_data, conn43):
    from watchtower_lib import es
    from watchtower_lib.zeek import read_log

    conn40 = read_log(shared_data / CONN_40)
    for df in (conn43, conn40):
        es.index_logs(df, "conn", settings=settings, refresh=True)
    got = es.weekly_host_stats(settings=settings, page_size=50)  # several composite pages

    both = pd.concat([conn43, conn40], ignore_index=True)
    both = both.loc[~_duplicated(both)]
    week = both["ts"].dt.tz_convert(None).dt.to_period("W-SUN").dt.start_time.dt.tz_localize("UTC")
    grouped = both.assign(week=week.astype("datetime64[ns, UTC]")).groupby(["week", "id.orig_h"])
    want = pd.DataFrame({
        "connections": grouped.size(),
        "orig_ip_bytes": grouped["orig_ip_bytes"].sum(),
        "resp_ip_bytes": grouped["resp_ip_bytes"].sum(),
        "distinct_resp_h": grouped["id.resp_h"].nunique(),
        "distinct_resp_p": grouped["id.resp_p"].nunique(),
    }).reset_index()
    assert got["week"].nunique() == 2  # Sunday 12 and Monday 13 June 2022 fall in two ISO weeks
    assert len(got) == len(want) > 50
    for column in ["connections", "orig_ip_bytes", "resp_ip_bytes", "distinct_resp_h", "distinct_resp_p"]:
        want[column] = want[column].astype("Int64")
    want["id.orig_h"] = want["id.orig_h"].astype("string")
    pd.testing.assert_frame_equal(got, want.sort_values(["week", "id.orig_h"], ignore_index=True))


def test_index_alerts_round_trip(settings, conn43):
    from watchtower_lib import es

    sample = conn43.dropna(subset=["service"]).head(25)
    alerts = pd.DataFrame({
        "id": ("test-v1:" + sample["uid"]).to_numpy(),
        "ts": sample["ts"].to_numpy(),
        "sensor": pd.array(["edge-01"] * len(sample), dtype="string"),
        "src_ip": sample["id.orig_h"].to_numpy(), "src_port": sample["id.orig_p"].astype("Int64").to_numpy(),
        "dst_ip": sample["id.resp_h"].to_numpy(), "dst_port": sample["id.resp_p"].astype("Int64").to_numpy(),
        "proto": sample["proto"].to_numpy(), "service": sample["service"].to_numpy(),
        "kind": pd.array(["unknown"] * len(sample), dtype="string"),
        "family": pd.array([pd.NA] * len(sample), dtype="string"),
        "score": np.linspace(0.5, 0.99, len(sample)),
        "severity": pd.array(["high"] * len(sample), dtype="string"),
        "explanation": pd.array(["duration=1 (baseline median 0.2, +0.300)"] * len(sample), dtype="string"),
        "explanation_json": pd.array(['[{"feature": "duration"}]'] * len(sample), dtype="string"),
        "uid": sample["uid"].to_numpy(),
        "model_version": pd.array(["test-v1"] * len(sample), dtype="string"),
    })
    for col in ("id", "src_ip", "dst_ip", "proto", "service", "uid"):
        alerts[col] = alerts[col].astype("string")
    report = es.index_alerts(alerts, settings=settings, refresh=True)
    assert (report.created, report.failed) == (25, 0)
    assert es.index_alerts(alerts, settings=settings, refresh=True).existing == 25
    back = es.search_df("alerts", settings=settings)
    pd.testing.assert_frame_equal(_sorted(back), _sorted(alerts))
    high = es.search_df("alerts", query={"range": {"event.risk_score": {"gte": 0.9}}}, settings=settings)
    assert len(high) == int((alerts["score"] >= 0.9).sum()) > 0


def test_node_down_names_url_and_fix(es_url):
    from watchtower_lib import es

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    s = load(env={"WATCHTOWER_ES_URL": f"http://127.0.0.1:{port}", "WATCHTOWER_ELASTICSEARCH__MAX_RETRIES": "0"})
    with pytest.raises(IntegrationError) as info:
        es.ping(settings=s)
    assert f"127.0.0.1:{port}" in str(info.value) and "scripts/es-node start" in str(info.value)
    with pytest.raises(IntegrationError):
        es.search_df("conn", settings=s)


def test_missing_client_names_the_extra(monkeypatch):
    from watchtower_lib import es

    monkeypatch.setitem(sys.modules, "elasticsearch", None)  # as if the extra were not installed
    with pytest.raises(MissingDependencyError) as info:
        es.client(load(env={"WATCHTOWER_ES_URL": "http://127.0.0.1:9"}))
    assert info.value.extra == "es" and "watchtower-zeek[es]" in str(info.value)


# ------------------------------------------------------------------ authentication and TLS
# The test node runs without security, so what the client sends is checked against a real HTTP
# server on 127.0.0.1 that records each request's headers and answers as Elasticsearch does.
@contextmanager
def _recording_server(status: int = 200, tls: ssl.SSLContext | None = None) -> Iterator[tuple[str, list[dict]]]:
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            body = (json.dumps({"cluster_name": "recorder", "status": "green", "number_of_nodes": 1})
                    if status == 200 else
                    json.dumps({"error": {"type": "security_exception", "reason": "unable to authenticate"},
                                "status": status}))
            self.send_response(status)
            self.send_header("X-Elastic-Product", "Elasticsearch")  # the client checks it
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        do_PUT = do_POST = do_DELETE = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _client_env(url: str, **es: str) -> dict[str, str]:
    return {"WATCHTOWER_ES_URL": url, "WATCHTOWER_ELASTICSEARCH__MAX_RETRIES": "0",
            **{f"WATCHTOWER_ELASTICSEARCH__{k.upper()}": v for k, v in es.items()}}


@pytest.mark.parametrize("key,config", [("api_key_env", {}), ("password_env", {"username": "watchtower"})])
def test_unset_secret_variable_names_it_and_how_to_set_it(monkeypatch, key, config):
    require("ES", _elasticsearch_importable(), "the client: pip install 'watchtower-zeek[es]'")
    from watchtower_lib import es

    monkeypatch.delenv("WT_TEST_ES_SECRET", raising=False)
    s = load(env=_client_env("http://127.0.0.1:9", **{key: "WT_TEST_ES_SECRET"}, **config))
    with pytest.raises(ConfigError) as info:
        es.client(s)
    text = str(info.value)
    assert f"elasticsearch.{key} names 'WT_TEST_ES_SECRET'" in text and "is not set" in text
    assert f"export WT_TEST_ES_SECRET=<the {'API key' if key == 'api_key_env' else 'password'}>" in text
    monkeypatch.setenv("WT_TEST_ES_SECRET", "")  # set, even if empty: no error
    assert es.client(s) is not None


def test_api_key_and_basic_auth_reach_the_server(monkeypatch):
    require("ES", _elasticsearch_importable(), "the client: pip install 'watchtower-zeek[es]'")
    from watchtower_lib import es

    api_key, password = f"key-{uuid.uuid4().hex}", f"pw-{uuid.uuid4().hex}"
    monkeypatch.setenv("WT_TEST_ES_API_KEY", api_key)
    monkeypatch.setenv("WT_TEST_ES_PASSWORD", password)
    with _recording_server() as (url, seen):
        assert es.ping(settings=load(env=_client_env(url)))["cluster_name"] == "recorder"
        assert seen[-1]["path"].startswith("/_cluster/health") and "authorization" not in seen[-1]
        es.ping(settings=load(env=_client_env(url, api_key_env="WT_TEST_ES_API_KEY")))
        assert seen[-1]["authorization"] == f"ApiKey {api_key}"
        es.ping(settings=load(env=_client_env(url, username="watchtower", password_env="WT_TEST_ES_PASSWORD")))
        assert seen[-1]["authorization"] == "Basic " + base64.b64encode(f"watchtower:{password}".encode()).decode()
        # both configured: the API key wins
        es.ping(settings=load(env=_client_env(url, api_key_env="WT_TEST_ES_API_KEY", username="watchtower",
                                               password_env="WT_TEST_ES_PASSWORD")))
        assert seen[-1]["authorization"] == f"ApiKey {api_key}"
    assert len(seen) == 4


def test_secrets_stay_out_of_logs_and_errors(monkeypatch, caplog, tmp_path):
    require("ES", _elasticsearch_importable(), "the client: pip install 'watchtower-zeek[es]'")
    from watchtower_lib import es, store

    store.ingest(NMAP_CONN, tmp_path / "store")

    api_key, password = f"key-{uuid.uuid4().hex}", f"pw-{uuid.uuid4().hex}"
    monkeypatch.setenv("WT_TEST_ES_API_KEY", api_key)
    monkeypatch.setenv("WT_TEST_ES_PASSWORD", password)
    caplog.set_level(logging.DEBUG)  # every logger, the client's transport included
    messages = []
    with _recording_server(status=401) as (url, seen):
        for config in ({"api_key_env": "WT_TEST_ES_API_KEY"},
                       {"username": "watchtower", "password_env": "WT_TEST_ES_PASSWORD"}):
            with pytest.raises(IntegrationError) as refused:
                es.ping(settings=load(env=_client_env(url, **config)))
            assert "HTTP 401" in str(refused.value) and "check the API key / username and password" in str(refused.value)
            messages.append(str(refused.value))
            s = load(env=_client_env(url, **config))
            down = load(env=_client_env(f"http://127.0.0.1:{_closed_port()}", **config))
            with pytest.raises(IntegrationError) as unreachable:
                es.ping(settings=down)
            messages.append(str(unreachable.value))
            assert "unreachable" in messages[-1]
            report = es.sync_pending(s, store_dir=tmp_path / "store")  # phase 2: logs a warning, never raises
            assert not report.ok and "HTTP 401" in report.message and report.rows_pending == 4504
            messages.append(report.message)
    assert {h["authorization"].split()[0] for h in seen} == {"ApiKey", "Basic"}  # the secrets were in play
    assert any("HTTP 401" in r.getMessage() for r in caplog.records if r.name == "watchtower_lib.es")
    assert any(r.name.startswith("elastic_transport") for r in caplog.records)  # the client did log
    logged = "\n".join([caplog.text, *(str(r.args) for r in caplog.records)])
    b64 = base64.b64encode(f"watchtower:{password}".encode()).decode()
    for secret in (api_key, password, b64):
        assert secret not in logged
        assert not any(secret in m for m in messages)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 (and its key), as a SOC's own CA would sign."""
    pytest.importorskip("cryptography", reason="needs cryptography (comes with paramiko, the ssh extra)")
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "watchtower-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "ca.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_ca_certs_and_verify_certs(tmp_path):
    require("ES", _elasticsearch_importable(), "the client: pip install 'watchtower-zeek[es]'")
    from watchtower_lib import es

    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with _recording_server(tls=context) as (url, seen):
        assert url.startswith("https://")
        trusted = load(env=_client_env(url, ca_certs=str(cert)))
        assert es.ping(settings=trusted)["cluster_name"] == "recorder"  # verified against the CA file
        with pytest.raises(IntegrationError) as untrusted:  # the system CAs do not know this certificate
            es.ping(settings=load(env=_client_env(url)))
        text = str(untrusted.value)
        assert url in text and "TLS handshake" in text and "CERTIFICATE_VERIFY_FAILED" in text
        assert "elasticsearch.ca_certs" in text and "scripts/es-node" not in text  # the fix, not "start a node"
        with pytest.warns(Warning) as warned:  # the client and urllib3 both say it is insecure
            assert es.ping(settings=load(env=_client_env(url, verify_certs="false")))["cluster_name"] == "recorder"
        assert any("verify_certs=False" in str(w.message) for w in warned)
    assert len(seen) == 2  # the untrusted handshake never got to send a request


def test_docs_table_is_the_code_table():
    doc = (ROOT / "docs" / "ecs.md").read_text(encoding="utf-8")
    assert es_mapping.markdown_table() in doc


def test_cli_install_templates_and_index(settings, shared_data, monkeypatch):
    from click.testing import CliRunner

    from watchtower_lib import es
    from watchtower_lib.cli import cli

    monkeypatch.setenv("WATCHTOWER_ES_URL", settings.elasticsearch.url)
    monkeypatch.setenv("WATCHTOWER_ELASTICSEARCH__INDEX_PREFIX", settings.elasticsearch.index_prefix)
    runner = CliRunner()
    assert "install-templates" in runner.invoke(cli, ["es", "--help"]).output
    result = runner.invoke(cli, ["es", "install-templates"])
    assert result.exit_code == 0, result.output
    path = shared_data / CONN_40
    result = runner.invoke(cli, ["es", "index", str(path)])
    assert result.exit_code == 0, result.output
    assert "5663 new, 0 already indexed, 0 rejected" in result.output
    result = runner.invoke(cli, ["es", "index", str(path)])
    assert "0 new, 5663 already indexed, 0 rejected" in result.output
    client = es.client(settings)
    client.indices.refresh(index=f"{settings.elasticsearch.index_prefix}-*")
    assert client.count(index=es.index_pattern("conn", settings.elasticsearch.index_prefix))["count"] == 5663


def test_a_file_indexed_by_the_cli_and_again_from_the_store_is_one_set_of_documents(settings, tmp_path,
                                                                                      monkeypatch):
    from click.testing import CliRunner

    from watchtower_lib import es, store
    from watchtower_lib.cli import cli

    prefix = settings.elasticsearch.index_prefix
    monkeypatch.setenv("WATCHTOWER_ES_URL", settings.elasticsearch.url)
    monkeypatch.setenv("WATCHTOWER_ELASTICSEARCH__INDEX_PREFIX", prefix)
    client = es.client(settings)
    pattern = es.index_pattern("conn", prefix)
    # from the file, under the default sensor, then from the store ingested with its default sensor
    result = CliRunner().invoke(cli, ["es", "index", str(NMAP_CONN)])
    assert result.exit_code == 0 and "4504 new, 0 already indexed, 0 rejected" in result.output, result.output
    client.indices.refresh(index=f"{prefix}-*")
    assert client.count(index=pattern)["count"] == 4504
    home = tmp_path / "store"
    store.ingest(NMAP_CONN, home)
    synced = es.sync_pending(settings, store_dir=home)
    assert synced.ok and (synced.created, synced.existing, synced.failed) == (0, 4504, 0)
    assert client.count(index=pattern)["count"] == 4504  # unchanged: every row had the same _id
    # the documents are the store's rows, sensor included, whichever path wrote them
    pd.testing.assert_frame_equal(_sorted(es.search_df("conn", settings=settings)), _sorted(store.load(home, "conn")))

    # the other way round, under a named sensor: store first, then the file with the same --sensor
    other = tmp_path / "edge"
    store.ingest(NMAP_CONN, other, sensor="edge-7")
    assert es.sync_pending(settings, store_dir=other).created == 4504  # another sensor: its own documents
    client.indices.refresh(index=f"{prefix}-*")
    result = CliRunner().invoke(cli, ["es", "index", "--sensor", "edge-7", str(NMAP_CONN)])
    assert result.exit_code == 0 and "0 new, 4504 already indexed, 0 rejected" in result.output, result.output
    client.indices.refresh(index=f"{prefix}-*")
    assert client.count(index=pattern)["count"] == 2 * 4504


def test_sync_store_catches_up_without_duplicates(settings, shared_data, tmp_path):
    from watchtower_lib import es, store

    store.ingest([shared_data / CONN_40, shared_data / f"{SDT}/008-ctu-normal-40-day1/weird.log.labeled"],
                 tmp_path / "store")
    stored = store.load(tmp_path / "store", "conn")
    first = es.sync_store(tmp_path / "store", settings=settings)
    assert set(first) >= {"conn", "weird"}
    assert first["conn"].created == len(stored) and first["conn"].failed == 0
    # a later run (say, after the node was down) sends everything again: nothing is added
    again = es.sync_store(tmp_path / "store", settings=settings)
    assert again["conn"].created == 0 and again["conn"].existing == len(stored)
    client = es.client(settings)
    client.indices.refresh(index=f"{settings.elasticsearch.index_prefix}-*")
    assert client.count(index=es.index_pattern("conn", settings.elasticsearch.index_prefix))["count"] == len(stored)
    # and the window form sends only that window
    part = es.sync_store(tmp_path / "store", start="2022-06-13", log_types=["conn"], settings=settings)
    assert part["conn"].total == int((stored["ts"] >= pd.Timestamp("2022-06-13", tz="UTC")).sum()) > 0


# ------------------------------------------------------------------ phase 2's catch-up ledger
def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_sync_pending_sends_only_new_parts_and_catches_up_after_an_outage(settings, shared_data, tmp_path):
    from watchtower_lib import es, store

    home = tmp_path / "store"
    store.ingest(shared_data / f"{SDT}/008-ctu-normal-40-day1", home)  # conn, http, notice, ssl, weird, sip, ...
    summary = store.summary(home).set_index("log_type")
    mapped = [t for t in summary.index if t in es_mapping.LOG_TYPES]
    assert {"conn", "http", "weird"} <= set(mapped) and "sip" in summary.index and "sip" not in mapped
    rows = int(summary.loc[mapped, "rows"].sum())
    parts = int(summary.loc[mapped, "parts"].sum())

    first = es.sync_pending(settings, store_dir=home)
    assert first.ok and first.failed == 0 and first.parts_done == parts and first.parts_skipped == 0
    assert first.rows_sent == rows == sum(first.reports[t].total for t in mapped)  # every stored row, once
    assert set(first.reports) == set(mapped)  # sip/tunnel have no ECS mapping: not sent
    client = es.client(settings)
    client.indices.refresh(index=f"{settings.elasticsearch.index_prefix}-*")
    prefix = settings.elasticsearch.index_prefix
    assert client.count(index=es.index_pattern("conn", prefix))["count"] == int(summary.loc["conn", "rows"]) == 5663
    key = es.ledger_key(settings.elasticsearch.url, prefix)
    assert len(es.read_ledger(home)["targets"][key]["parts"]) == parts

    second = es.sync_pending(settings, store_dir=home)  # nothing new: nothing read, nothing sent
    assert (second.rows_sent, second.parts_done, second.parts_skipped) == (0, 0, parts) and second.ok

    # new files arrive while the node is down: the phase goes on, says so, and the ledger is untouched
    store.ingest(shared_data / CONN_43, home)
    ledger_before = (home / es.LEDGER_NAME).read_bytes()
    port = _closed_port()
    down = load(env={"WATCHTOWER_ES_URL": f"http://127.0.0.1:{port}", "WATCHTOWER_ELASTICSEARCH__MAX_RETRIES": "0",
                     "WATCHTOWER_ELASTICSEARCH__INDEX_PREFIX": prefix})
    failed = es.sync_pending(down, store_dir=home)
    assert not failed.ok and failed.created == 0
    assert failed.rows_pending == 9048 + rows and failed.pending_by_log_type["conn"] == 9048 + 5663
    assert f"127.0.0.1:{port}" in failed.message and "next run catches up" in failed.message
    assert "not indexed" in failed.message and f"{9048 + rows:,} rows" in failed.message
    assert (home / es.LEDGER_NAME).read_bytes() == ledger_before

    # a part the ledger lists but the store no longer has (its source was re-ingested) is dropped quietly
    data = es.read_ledger(home)
    data["targets"][key]["parts"].append("conn/date=2022-06-12/" + "0" * 64 + "-0.parquet")
    (home / es.LEDGER_NAME).write_text(__import__("json").dumps(data), encoding="utf-8")

    later = es.sync_pending(settings, store_dir=home)  # the node is back: only the new file's parts go
    assert later.ok and later.rows_sent == later.created == 9048 and later.parts_skipped == parts
    assert set(later.reports) == {"conn"} and later.failed == 0
    client.indices.refresh(index=f"{prefix}-*")
    assert client.count(index=es.index_pattern("conn", prefix))["count"] == 5663 + 9048
    ledger = es.read_ledger(home)["targets"][key]["parts"]
    assert len(ledger) == parts + later.parts_done and not any(p.startswith("conn/date=2022-06-12/000") for p in ledger)
    assert not list(home.glob(f".{es.LEDGER_NAME}.*"))  # no temp file left behind


class _Forwarder:
    """A TCP forwarder on one fixed 127.0.0.1 port in front of the real node: the same URL can be
    taken down (``stop``) and brought back (``start``), and ``start(cut_after_bulks=N)`` drops every
    connection and stops listening when the (N+1)-th ``_bulk`` request arrives (that one never
    reaches the node), as a node or network dying in the middle of a sync would."""

    def __init__(self, target_url: str) -> None:
        host, _, port = target_url.split("//", 1)[1].partition(":")
        self.target = (host, int(port))
        self.port = _closed_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.bulks = 0  # _bulk requests forwarded since start
        self._cut_after: int | None = None
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()

    def start(self, cut_after_bulks: int | None = None) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the same port again at once
        listener.bind(("127.0.0.1", self.port))
        listener.listen(32)
        listener.settimeout(0.05)
        self.bulks, self._cut_after, self._listener = 0, cut_after_bulks, listener
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, args=(listener, self._stopped), daemon=True).start()

    def stop(self) -> None:
        """Nothing listens on the port any more; open connections are dropped."""
        with self._lock:
            self._stopped.set()
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for sock in self._socks:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._socks.clear()

    def _accept(self, listener: socket.socket, stopped: threading.Event) -> None:
        while not stopped.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self.target)
            with self._lock:
                if stopped.is_set():
                    client.close()
                    upstream.close()
                    return
                self._socks |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while data := src.recv(65536):
                if requests and b"/_bulk" in data.split(b"\r\n", 1)[0]:
                    with self._lock:
                        cut = self._cut_after is not None and self.bulks >= self._cut_after
                        self.bulks += not cut  # a cut request is not forwarded
                    if cut:
                        self.stop()
                        return
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _part_rows(home: Path, relpaths: Iterable[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(home / relpath).metadata.num_rows for relpath in relpaths)


def test_sync_pending_same_url_down_cut_mid_sync_and_back(settings, shared_data, tmp_path):
    from watchtower_lib import es, store

    home = tmp_path / "store"
    store.ingest(shared_data / f"{SDT}/008-ctu-normal-40-day1", home)
    summary = store.summary(home).set_index("log_type")
    mapped = [t for t in summary.index if t in es_mapping.LOG_TYPES]
    rows, parts = int(summary.loc[mapped, "rows"].sum()), int(summary.loc[mapped, "parts"].sum())
    twins = sum(int(_duplicated(store.load(home, t)).sum()) for t in mapped)  # identical rows: one _id
    assert (rows, parts, twins) == (6622, 10, 1)
    prefix = settings.elasticsearch.index_prefix
    proxy = _Forwarder(settings.elasticsearch.url)
    via_proxy = load(env={"WATCHTOWER_ES_URL": proxy.url, "WATCHTOWER_ELASTICSEARCH__MAX_RETRIES": "0",
                          "WATCHTOWER_ELASTICSEARCH__INDEX_PREFIX": prefix})
    key = es.ledger_key(proxy.url, prefix)
    client = es.client(settings)  # straight to the node, to count
    pattern = f"{prefix}-zeek-*"
    try:
        # 1. the URL is down: the phase says so, nothing is marked as indexed
        down = es.sync_pending(via_proxy, store_dir=home)
        assert not down.ok and (down.created, down.parts_done, down.parts_pending) == (0, 0, parts)
        assert down.rows_pending == rows and f"{rows:,} rows in {parts} store part(s) were not indexed" in down.message
        assert f"Elasticsearch at {proxy.url} is unreachable" in down.message
        assert "next run catches up" in down.message
        assert not (home / es.LEDGER_NAME).exists()

        # 2. it comes back, then dies after 7 bulk requests: conn's two parts (540 + 5,123 rows:
        #    1 + 6 requests of 1,000; conn goes first) are acknowledged, the 8th request is cut
        proxy.start(cut_after_bulks=7)
        cut = es.sync_pending(via_proxy, store_dir=home)
        assert not cut.ok and proxy.bulks == 7
        assert (cut.parts_done, cut.parts_pending, cut.created, cut.failed) == (2, parts - 2, 5663, 0)
        assert "Before the failure: 2 new store part(s) indexed" in cut.message and "next run catches up" in cut.message
        acknowledged = es.read_ledger(home)["targets"][key]["parts"]
        assert len(acknowledged) == 2 and all(p.startswith("conn/") for p in acknowledged)
        assert _part_rows(home, acknowledged) == 5663 == cut.rows_sent
        assert cut.rows_pending == rows - 5663
        client.indices.refresh(index=pattern)
        assert client.count(index=pattern)["count"] == 5663

        # 3. back for good, same URL: exactly the parts not acknowledged are sent
        proxy.start()
        later = es.sync_pending(via_proxy, store_dir=home)
        assert later.ok and (later.parts_done, later.parts_skipped, later.failed) == (parts - 2, 2, 0)
        # the cut request never reached the node: all of its rows are new now, bar the twin
        assert later.rows_sent == rows - 5663 and (later.created, later.existing) == (rows - 5663 - twins, twins)
        assert "conn" not in later.reports
        assert len(es.read_ledger(home)["targets"][key]["parts"]) == parts
    finally:
        proxy.stop()
    client.indices.refresh(index=pattern)
    assert client.count(index=pattern)["count"] == rows - twins  # every stored row, once


def test_sync_pending_without_a_url_does_nothing(tmp_path):
    from watchtower_lib import es

    report = es.sync_pending(load(env={}), store_dir=tmp_path)
    assert not report.enabled and report.rows_sent == 0 and "not configured" in report.message


# ------------------------------------------------------------------ templates installed by indexing itself
@pytest.fixture
def bare_settings(es_url):
    """Like ``settings`` but without install_templates: a fresh cluster as the pipeline meets it."""
    prefix = f"wt-bare-{uuid.uuid4().hex[:8]}"
    s = load(env={"WATCHTOWER_ES_URL": es_url, "WATCHTOWER_ELASTICSEARCH__INDEX_PREFIX": prefix})
    from watchtower_lib import es

    client = es.client(s)
    assert not client.indices.exists_index_template(name=f"{prefix}-zeek-conn")
    yield s
    client.indices.delete(index=f"{prefix}-*", ignore_unavailable=True, allow_no_indices=True)
    client.indices.delete_index_template(name=f"{prefix}-*")
    client.cluster.delete_component_template(name=f"{prefix}-ecs-base")


def test_indexing_installs_the_templates_first(bare_settings, conn43):
    from watchtower_lib import es

    prefix = bare_settings.elasticsearch.index_prefix
    report = es.index_logs(conn43.head(500), "conn", settings=bare_settings, refresh=True)
    assert (report.created, report.failed) == (500, 0)
    index = report.indices[0]
    got = es.client(bare_settings).indices.get_field_mapping(index=index, fields="source.ip,destination.port")
    types = {k: next(iter(v["mapping"].values()))["type"] for k, v in got[index]["mappings"].items()}
    assert types == {"source.ip": "ip", "destination.port": "long"}
    names = {t["name"] for t in es.client(bare_settings).indices.get_index_template(name=f"{prefix}-*")["index_templates"]}
    assert f"{prefix}-alerts" in names and f"{prefix}-zeek-conn" in names


# ------------------------------------------------------------------ the weekly report's source
def test_report_source_elasticsearch_gives_the_store_figures(settings, shared_data, tmp_path):
    from watchtower_lib import es, store
    from watchtower_lib.errors import ConfigError

    home = tmp_path / "store"
    store.ingest([shared_data / CONN_43, shared_data / CONN_40], home)
    s = load(env={"WATCHTOWER_ES_URL": settings.elasticsearch.url, "WATCHTOWER_STORE_DIR": str(home),
                  "WATCHTOWER_ELASTICSEARCH__INDEX_PREFIX": settings.elasticsearch.index_prefix})
    assert s.store_dir == home
    assert es.sync_pending(s).created == 9048 + 5663
    es.client(s).indices.refresh(index=f"{settings.elasticsearch.index_prefix}-*")

    week = (pd.Timestamp("2022-06-13", tz="UTC"), pd.Timestamp("2022-06-20", tz="UTC"))  # Monday's ISO week
    from_store = es.host_stats(s, *week)
    from_es = es.host_stats(s, *week, source="elasticsearch", page_size=40)  # several composite pages
    conn = store.load(home, "conn", *week)
    assert int(from_store["connections"].sum()) == len(conn) > 0
    assert len(from_store) == conn["id.orig_h"].nunique() > 40
    pd.testing.assert_frame_equal(from_es, from_store)  # connections, bytes and distinct counts per host

    rows_es = es.load_rows(s, "conn", *week, source="elasticsearch")
    assert len(rows_es) == len(conn)
    pd.testing.assert_series_equal(rows_es["id.orig_h"].astype(str).value_counts().sort_index(),
                                   conn["id.orig_h"].astype(str).value_counts().sort_index())
    whole = es.host_stats(s, source="elasticsearch")  # no window: both days
    assert int(whole["connections"].sum()) == 9048 + 5663

    with pytest.raises(ConfigError, match="elasticsearch.url is not set"):
        es.host_stats(load(env={"WATCHTOWER_STORE_DIR": str(home)}), *week, source="elasticsearch")


def test_cli_sync_sends_pending_parts_once(settings, shared_data, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from watchtower_lib import store
    from watchtower_lib.cli import cli

    store.ingest(shared_data / CONN_40, tmp_path / "store")
    monkeypatch.setenv("WATCHTOWER_ES_URL", settings.elasticsearch.url)
    monkeypatch.setenv("WATCHTOWER_ELASTICSEARCH__INDEX_PREFIX", settings.elasticsearch.index_prefix)
    monkeypatch.setenv("WATCHTOWER_STORE_DIR", str(tmp_path / "store"))
    runner = CliRunner()
    first = runner.invoke(cli, ["es", "sync"])
    assert first.exit_code == 0, first.output
    assert "conn: 5663 new, 0 already indexed, 0 rejected" in first.output
    again = runner.invoke(cli, ["es", "sync"])
    assert again.exit_code == 0 and "0 new store part(s)" in again.output and "5663" not in again.output
    everything = runner.invoke(cli, ["es", "sync", "--all"])
    assert "conn: 0 new, 5663 already indexed, 0 rejected" in everything.output
    monkeypatch.setenv("WATCHTOWER_ES_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("WATCHTOWER_ELASTICSEARCH__MAX_RETRIES", "0")
    store.ingest(shared_data / CONN_43, tmp_path / "store")
    down = runner.invoke(cli, ["es", "sync"])
    # another URL: another ledger entry, so every stored row (5,663 + 9,048) is pending for it
    assert down.exit_code == 2 and "14,711 rows" in down.output and "next run catches up" in down.output


def test_sync_pending_marks_a_part_only_when_no_row_was_rejected(settings, shared_data, tmp_path):
    from watchtower_lib import es, store

    home = tmp_path / "store"
    store.ingest(shared_data / f"{SDT}/008-ctu-normal-40-day1/weird.log.labeled", home)  # 56 rows, 2 days
    prefix = settings.elasticsearch.index_prefix
    client = es.client(settings)
    # an index already holding the labels as numbers: every labelled row is refused
    client.indices.create(index=f"{prefix}-zeek-weird-2022.06",
                          mappings={"properties": {"zeek": {"properties": {"weird": {"properties": {
                              "label": {"type": "long"}}}}}}})
    refused = es.sync_pending(settings, store_dir=home)
    assert refused.ok and (refused.created, refused.failed) == (0, 56)
    assert (refused.parts_done, refused.parts_failed) == (0, 2) and "stay pending" in refused.message
    assert not (home / es.LEDGER_NAME).exists()

    client.indices.delete(index=f"{prefix}-zeek-weird-2022.06")  # the operator fixes the mapping
    fixed = es.sync_pending(settings, store_dir=home)
    assert (fixed.created, fixed.failed, fixed.parts_done) == (56, 0, 2)
    assert es.sync_pending(settings, store_dir=home).rows_sent == 0
