"""Benchmark: Zeek JSON-lines logs -> pandas DataFrame, five routes, each as a whole process.

What it measures and why: ``watchtower_lib.zeek.read_log`` on JSON logs (``LogAscii::use_json=T``)
used to decode every line with ``json.loads`` and convert every value in Python (~20,000 rows/s).
It now parses each batch with ``pyarrow.json`` and converts whole columns, falling back to the
line-by-line path only for a batch it cannot vouch for. The routes:

* ``watchtower read_log``: the reader as shipped (vectorised path);
* ``watchtower line-by-line``: the same call with ``_zeek_json.FAST = False``, i.e. the path every
  batch took before (the same code, kept as the fallback): the "before" figure;
* ``zat JSONLogToDataFrame``: zat 0.4's JSON reader (``pandas.read_json(lines=True)`` plus
  ``to_datetime`` of ``ts``; no Zeek types, no schema);
* ``pandas.read_json(lines=True)``: plain pandas;
* ``pyarrow.json + ArrowDtype``: ``pyarrow.json.read_json`` with inferred types, then
  ``to_pandas(types_mapper=pd.ArrowDtype)``: the fastest route to a DataFrame we know, with none of
  the Zeek typing (ts stays text or a float, counts stay int64, no escapes decoded).

Each route runs in a fresh Python process (imports count, as for a user) and the routes alternate
run by run so that machine noise hits all of them alike; we report medians of wall time and of peak
RSS (``ru_maxrss`` from ``os.wait4``), rows/s from the median, and the load average before and after.

Inputs, both REAL DATA, one of them TILED:

1. ``multi/wrccdc-2018/zeek-json/dns.json.gz`` from the shared corpus as it is: 53,615 real WRCCDC 2018
   DNS rows, gzip, ISO-8601 ``ts``, 26.7 MB decompressed.
2. ``scenarios/stratosphere-sdt/002-nmap-port-scanning/conn.log``, a real Zeek JSON conn log (4,504
   rows, epoch ``ts``), REPEATED LINE FOR LINE until the file has ``--rows`` rows (default 500,000,
   about 163 MB, plain text). No value is invented or altered; rows simply recur.

Usage: python benchmarks/parse_json.py [--rows 500000] [--runs 3] [--data ../shared/data] [--skip-before]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import parse  # noqa: E402  (the TSV benchmark: its read_log route and measuring loop)

DNS = "multi/wrccdc-2018/zeek-json/dns.json.gz"
CONN = "scenarios/stratosphere-sdt/002-nmap-port-scanning/conn.log"

ROUTES = {
    "watchtower read_log": parse.ROUTES["watchtower read_log"],  # the same program as for TSV
    "watchtower line-by-line": """
import sys
from watchtower_lib import _zeek_json
from watchtower_lib.zeek import read_log
_zeek_json.FAST = False
df = read_log(sys.argv[1])
print(len(df))
""",
    "zat JSONLogToDataFrame": """
import sys
from zat.json_log_to_dataframe import JSONLogToDataFrame
df = JSONLogToDataFrame().create_dataframe(sys.argv[1])
print(len(df))
""",
    "pandas.read_json(lines)": """
import sys
import pandas as pd
df = pd.read_json(sys.argv[1], lines=True)
print(len(df))
""",
    "pyarrow.json + ArrowDtype": """
import sys
import pandas as pd
import pyarrow.json as pj
df = pj.read_json(sys.argv[1]).to_pandas(types_mapper=pd.ArrowDtype)
print(len(df))
""",
}


def make_tiled(data: Path, rows: int, out: Path) -> Path:
    """Repeat the real nmap conn.log's lines until the file has ``rows`` rows."""
    if out.exists():
        return out
    lines = (data / CONN).read_bytes().splitlines(keepends=True)
    tmp = out.with_suffix(".part")
    with open(tmp, "wb") as f:
        written = 0
        while written < rows:
            take = lines[: rows - written]
            f.writelines(take)
            written += len(take)
    tmp.rename(out)
    return out


def bench(path: Path, rows: int, runs: int, routes: dict[str, str]) -> None:
    load = os.getloadavg()
    med = parse.alternate(path, rows, runs, routes, indent="  ")
    after = os.getloadavg()
    ours = med["watchtower read_log"][0]
    print(f"  medians over {runs} alternating runs (whole process, {os.cpu_count()} CPUs; "
          f"load average {load[0]:.2f} before, {after[0]:.2f} after):")
    for name, (wall, rss) in med.items():
        print(f"    {name:26s} {wall:7.2f} s  {rows / wall:10,.0f} rows/s  peak RSS {rss:6.0f} MB  "
              f"{wall / ours:5.2f}x read_log's time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000, help="rows of the tiled conn log")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "watchtower-bench")
    parser.add_argument("--skip-before", action="store_true", help="leave out the line-by-line route (slow)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    routes = {k: v for k, v in ROUTES.items() if not (args.skip_before and k == "watchtower line-by-line")}

    dns = args.data / DNS
    print(f"input 1: {dns} (real WRCCDC 2018 dns log as it is, gzip, 53,615 rows, ISO-8601 ts)")
    bench(dns, 53_615, args.runs, routes)
    tiled = make_tiled(args.data, args.rows, args.workdir / f"conn-nmap-tiled-{args.rows}.json")
    print(f"\ninput 2: {tiled} ({tiled.stat().st_size / 1e6:.0f} MB, {args.rows:,} rows)")
    print(f"  = the real Stratosphere nmap conn log ({CONN}, 4,504 rows, epoch ts) repeated line for line")
    bench(tiled, args.rows, args.runs, routes)


if __name__ == "__main__":
    main()
