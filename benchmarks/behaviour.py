"""Benchmark: behaviour.compare_periods on a week-sized conn log, few hosts and many hosts.

Input: the real IoT-23 capture 34-1 conn.log (23,145 rows over 24 h, 2 internal hosts),
tiled. Each copy gets its own internal addresses (192.168.1.x -> 10.<k>.<k>.x), so the
tiled log has 2 hosts per copy; timestamps are kept, so the two halves of the day are
the periods compared. ``--sample`` takes that many rows (seeded) of the capture per copy,
to get many hosts at the same total size. Each configuration runs in a fresh process;
prints a Markdown row: rows, hosts, wall seconds of compare_periods, peak RSS.

    python benchmarks/behaviour.py --copies 87            # ~2.0 M rows, 174 hosts
    python benchmarks/behaviour.py --copies 2000 --sample 1000   # 2.0 M rows, 4,000 hosts
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / \
    "labelled/iot23/CTU-IoT-Malware-Capture-34-1/conn.log.labeled.gz"


def tiled(copies: int, sample: int | None) -> pd.DataFrame:
    from watchtower_lib.labels import read_labelled

    base = read_labelled(SAMPLE)
    rng = np.random.default_rng(0)
    parts = []
    for k in range(copies):
        part = base if sample is None else base.iloc[np.sort(rng.choice(len(base), sample, replace=False))]
        prefix = f"10.{k // 256}.{k % 256}."
        part = part.assign(**{"id.orig_h": part["id.orig_h"].str.replace("192.168.1.", prefix, regex=False),
                              "id.resp_h": part["id.resp_h"].str.replace("192.168.1.", prefix, regex=False)})
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=87)
    parser.add_argument("--sample", type=int, default=None, help="rows of the capture per copy (default all)")
    args = parser.parse_args()
    from watchtower_lib import behaviour

    conn = tiled(args.copies, args.sample)
    t0, t1 = conn["ts"].min(), conn["ts"].max()
    mid = t0 + (t1 - t0) / 2
    start = time.perf_counter()
    result = behaviour.compare_periods(conn, (t0, mid), (mid, t1 + pd.Timedelta(seconds=1)))
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| {len(conn):,} | {len(result.hosts):,} | {wall:.1f} | {rss:,.0f} |")


if __name__ == "__main__":
    main()
