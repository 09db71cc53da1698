"""Benchmark: the Parquet store (ingest, re-ingest, full load, one-hour load), each as a whole process.

What it measures and why: ``store.ingest`` must stream (peak memory well under
reading the whole file), re-ingesting known content must cost only the hash,
and a one-hour ``store.load`` must read only that day's partition. Every step
runs in a fresh Python process (imports count, as for a user); we report the
median of ``--runs`` runs of wall time and peak RSS (``ru_maxrss`` from ``os.wait4``).

The input is the one ``benchmarks/parse.py`` builds, SYNTHESISED BY TILING REAL
DATA: the real IoT-23 capture 34-1 conn.log (23,145 rows, label columns stripped)
repeated to 2,000,000 rows (about 225 MB). Because the same day of rows repeats,
every row group spans the whole day, so within a day only the ts filter (not
row-group statistics) trims: a worst case for the one-hour load.

Usage: python benchmarks/store.py [--rows 2000000] [--runs 3] [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import parse  # noqa: E402  (make_input: the tiled real IoT-23 conn.log)


def run(code: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB and stdout of ``python -c code`` in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read().strip() if proc.stdout else ""
    if status != 0:
        raise SystemExit(f"benchmark step failed: {code}\n{out}")
    return wall, usage.ru_maxrss / 1024, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "watchtower-bench")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = parse.make_input(args.data, args.rows, args.workdir / f"conn-iot23-tiled-{args.rows}.log")
    store = args.workdir / "store"
    print(f"input: {path} ({path.stat().st_size / 1e6:.0f} MB, {args.rows} rows, tiled real IoT-23 conn.log)")
    s, p = str(store), str(path)
    hour = "'2018-12-22 03:00', '2018-12-22 04:00'"
    steps = {
        "ingest": f"from watchtower_lib import store; r = store.ingest([{p!r}], {s!r}); "
                  "print(r.rows, 'rows,', r.files_written, 'parts')",
        "re-ingest (skipped)": f"from watchtower_lib import store; r = store.ingest([{p!r}], {s!r}); "
                               "print(r.files_skipped, 'file skipped')",
        "zeek.read_log (reference)": f"from watchtower_lib import zeek; print(len(zeek.read_log({p!r})), 'rows')",
        "load all": f"from watchtower_lib import store; print(len(store.load({s!r}, 'conn')), 'rows')",
        "load one hour": f"from watchtower_lib import store; s = {s!r}; n = len(store.load(s, 'conn', {hour})); "
                         f"print(n, 'rows from', len(store.files(s, 'conn', {hour})), 'of', "
                         "len(store.files(s, 'conn')), 'files')",
    }
    results: dict[str, list[tuple[float, float, str]]] = {name: [] for name in steps}
    for _ in range(args.runs):
        shutil.rmtree(store, ignore_errors=True)
        for name, code in steps.items():
            results[name].append(run(code))
    size = sum(f.stat().st_size for f in store.rglob("*.parquet")) / 1e6
    print("| step | wall (s) | peak RSS (MB) | result |\n|---|---|---|---|")
    for name, values in results.items():
        wall = statistics.median(v[0] for v in values)
        rss = statistics.median(v[1] for v in values)
        print(f"| {name} | {wall:.2f} | {rss:.0f} | {values[-1][2]} |")
    print(f"store: {size:.1f} MB of Parquet for {path.stat().st_size / 1e6:.0f} MB of TSV")


if __name__ == "__main__":
    main()
