"""Elasticsearch bulk indexing: documents per second, tuned ``index_logs`` vs default ``helpers.bulk``.

The records: a real conn log (default IoT-23 CTU-IoT-Malware-Capture-34-1, 23,145 rows
from ../shared/data) TILED to --docs rows: copy k has its ``ts`` shifted by k times the
log's span plus one second and ``-k`` appended to its ``uid``, so every row is a
distinct document. The values are otherwise the capture's own; the volume is synthetic.

Both runs build the same ECS documents with the same code (``watchtower_lib.es``), into
fresh indices on the same node, in the same process; the clock includes turning the
DataFrame into documents.

* default: ``elasticsearch.helpers.bulk(Elasticsearch(url), actions)``, client and helper
  with their defaults (the standard json module, 500 documents per request, one request
  at a time), into an index with Elasticsearch's defaults (refresh every 1 s, 1 replica).
* tuned: ``watchtower_lib.es.index_logs`` through ``watchtower_lib.es.client`` (orjson
  bodies, ``--chunk-size`` documents per request, ``--threads`` requests in flight, refresh
  off and translog fsync relaxed during the load, 0 replicas from our template).

Run: ``.venv/bin/python benchmarks/es_bulk.py [--docs 1000000] [--url URL]``. Without
--url or $WATCHTOWER_ES_URL it starts a node with scripts/es-node and stops it after.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from watchtower_lib import es as wes  # noqa: E402
from watchtower_lib import es_mapping as m  # noqa: E402
from watchtower_lib.config import load  # noqa: E402
from watchtower_lib.zeek import read_log  # noqa: E402

DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "labelled" / "iot23" / "CTU-IoT-Malware-Capture-34-1" / \
    "conn.log.labeled.gz"


def tile(df: pd.DataFrame, n: int) -> pd.DataFrame:
    """``n`` rows from copies of ``df``, each copy shifted in time and with its own uids."""
    span = df["ts"].max() - df["ts"].min() + pd.Timedelta(seconds=1)
    parts, k, have = [], 0, 0
    while have < n:
        part = df.head(n - have).copy()
        part["ts"] = part["ts"] + span * k
        part["uid"] = (part["uid"] + f"-{k}").astype(df["uid"].dtype)
        parts.append(part)
        have += len(part)
        k += 1
    return pd.concat(parts, ignore_index=True)


def run_default(url: str, df: pd.DataFrame, index: str) -> float:
    """``helpers.bulk`` with an ``Elasticsearch(url)`` client of the library's defaults (its own json)."""
    from elasticsearch import Elasticsearch, helpers

    client = Elasticsearch(url, request_timeout=60)

    client.indices.create(index=index, settings={"index": {"number_of_shards": 1, "number_of_replicas": 1}})
    t0 = time.perf_counter()
    columns = [str(c) for c in df.columns]
    names = [m.ecs_name("conn", c) for c in columns]
    values = [m.to_python(df[c]) for c in columns]
    constants = {"event.kind": "event", "event.category": ["network"], "event.module": "zeek",
                 "event.dataset": "zeek.conn", "ecs.version": m.ECS_VERSION}
    actions = wes._actions("conn", names, values, [index] * len(df), constants)
    ok, errors = helpers.bulk(client, actions)
    elapsed = time.perf_counter() - t0
    assert ok == len(df) and not errors, (ok, errors)
    return elapsed


def check(client, index: str, expected: int) -> None:
    """Count what landed, show the node's own indexing time, then drop the indices."""
    client.indices.refresh(index=index)
    count = client.count(index=index)["count"]
    ix = client.indices.stats(index=index, metric="indexing")["_all"]["primaries"]["indexing"]
    print(f"    {index}: {count:,} documents, node-side indexing time {ix['index_time_in_millis'] / 1000:.1f}s")
    assert count == expected, (index, count, expected)
    client.indices.delete(index=index)


def cleanup(client) -> None:
    client.indices.delete(index="wt-bench-*", ignore_unavailable=True, allow_no_indices=True)
    for name in [t["name"] for t in client.indices.get_index_template(name="wt-bench-*")["index_templates"]] \
            if client.indices.exists_index_template(name="wt-bench-*") else []:
        client.indices.delete_index_template(name=name)
    for name in [t["name"] for t in client.cluster.get_component_template(name="wt-bench-*")
                 ["component_templates"]] if client.cluster.exists_component_template(name="wt-bench-*") else []:
        client.cluster.delete_component_template(name=name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="real conn log to tile")
    ap.add_argument("--url", default=os.environ.get("WATCHTOWER_ES_URL"))
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--skip-default", action="store_true", help="only the tuned run")
    ap.add_argument("--sweep", default=None,
                    help="tuned runs to compare, CHUNKxTHREADS,... (e.g. 2000x2,5000x4); default: one run")
    args = ap.parse_args()

    state = None
    url = args.url
    if not url:
        state = tempfile.mkdtemp(prefix="es-bench-state-")
        t0 = time.perf_counter()
        url = subprocess.run([str(ROOT / "scripts" / "es-node"), "start", "--state", state], check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        print(f"started {url} in {time.perf_counter() - t0:.1f}s")
    try:
        settings = load(env={"WATCHTOWER_ES_URL": url})
        settings = dataclasses.replace(settings, elasticsearch=dataclasses.replace(
            settings.elasticsearch, index_prefix="wt-bench", request_timeout=120.0))
        client = wes.client(settings)
        cleanup(client)
        base = read_log(args.source)
        df = tile(base, args.docs)
        print(f"{len(df):,} conn records: {args.source.name} ({len(base):,} real rows) tiled "
              f"{-(-len(df) // len(base))} times, ts shifted per copy")

        results: dict[str, float] = {}
        if not args.skip_default:
            elapsed = run_default(settings.elasticsearch.url, df, "wt-bench-default")
            results["default"] = len(df) / elapsed
            print(f"default helpers.bulk (500/request, 1 thread, refresh 1s): {elapsed:7.1f}s "
                  f"{results['default']:9,.0f} docs/s")
            check(client, "wt-bench-default", len(df))
        configs = [(args.chunk_size, args.threads)]
        if args.sweep:
            configs = [tuple(int(x) for x in item.split("x")) for item in args.sweep.split(",")]
        for k, (chunk_size, threads) in enumerate(configs):
            run_settings = dataclasses.replace(settings, elasticsearch=dataclasses.replace(
                settings.elasticsearch, index_prefix=f"wt-bench-t{k}"))
            wes.install_templates(client, settings=run_settings)
            t0 = time.perf_counter()
            report = wes.index_logs(df, "conn", es=client, settings=run_settings, chunk_size=chunk_size,
                                    threads=threads, bulk_load=True)
            elapsed = time.perf_counter() - t0
            assert report.created == len(df) and report.failed == 0, report
            rate = len(df) / elapsed
            results["tuned"] = max(results.get("tuned", 0.0), rate)
            print(f"tuned index_logs ({chunk_size}/request, {threads} threads, refresh off): "
                  f"{elapsed:7.1f}s {rate:9,.0f} docs/s"
                  + (f"  {rate / results['default']:.2f}x" if "default" in results else ""))
            check(client, f"wt-bench-t{k}-*", len(df))
        if "default" in results:
            print(f"ratio best tuned/default: {results['tuned'] / results['default']:.2f}x")
        cleanup(client)
    finally:
        if state:
            subprocess.run([str(ROOT / "scripts" / "es-node"), "stop", "--state", state], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
