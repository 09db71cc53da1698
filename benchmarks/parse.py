"""Benchmark: Zeek conn.log -> pandas DataFrame, three routes, each as a whole process.

What it measures and why: ``watchtower_lib.zeek.read_log`` must be at least 2x
faster than zat's ``LogToDataFrame`` and within 1.3x of the fastest route to a
DataFrame we know (``pyarrow.csv.read_csv`` with declared column types, then
``to_pandas(types_mapper=pd.ArrowDtype)``), with peak memory no more than zat's.
Each route runs in a fresh Python process (so imports count, as for a user) and
the routes alternate run by run so that machine noise hits all of them alike;
we report medians of wall time and of peak RSS (``ru_maxrss`` from ``os.wait4``).

The input is SYNTHESISED BY TILING REAL DATA: the IoT-23 sample
``labelled/iot23/CTU-IoT-Malware-Capture-34-1/conn.log.labeled.gz`` (23,145 real
rows) is repeated until the file has 2,000,000 rows (about 225 MB). Its IoT-23
label columns (joined to ``tunnel_parents`` by three spaces) are stripped, so the
file is a proper Zeek conn.log: the same header, the same 21 columns, the real rows
in the real order, repeated. No value is invented or altered.

Usage: python benchmarks/parse.py [--rows 2000000] [--runs 5] [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "labelled/iot23/CTU-IoT-Malware-Capture-34-1/conn.log.labeled.gz"

ROUTES = {
    "watchtower read_log": """
import sys
from watchtower_lib.zeek import read_log
df = read_log(sys.argv[1])
print(len(df))
""",
    "zat LogToDataFrame": """
import sys
from zat.log_to_dataframe import LogToDataFrame
df = LogToDataFrame().create_dataframe(sys.argv[1])
print(len(df))
""",
    "pyarrow.csv + ArrowDtype": """
import sys
import pandas as pd
import pyarrow as pa
import pyarrow.csv as csv
path = sys.argv[1]
with open(path, "rb") as f:
    head = [next(f) for _ in range(8)]
fields = head[6].decode().rstrip("\\n").split("\\t")[1:]
zeek = head[7].decode().rstrip("\\n").split("\\t")[1:]
kinds = {"time": pa.float64(), "interval": pa.float64(), "double": pa.float64(), "count": pa.uint64(),
         "int": pa.int64(), "port": pa.uint16(), "bool": pa.bool_()}
types = {f: kinds.get(t, pa.string()) for f, t in zip(fields, zeek)}
table = csv.read_csv(
    path,
    read_options=csv.ReadOptions(skip_rows=8, column_names=fields),
    parse_options=csv.ParseOptions(delimiter="\\t", quote_char=False, escape_char=False,
                                   invalid_row_handler=lambda row: "skip"),  # the trailing #close line
    convert_options=csv.ConvertOptions(column_types=types, null_values=["-"], strings_can_be_null=True,
                                       true_values=["T"], false_values=["F"]),
)
df = table.to_pandas(types_mapper=pd.ArrowDtype)
print(len(df))
""",
}


def make_input(data: Path, rows: int, out: Path) -> Path:
    """Tile the real IoT-23 conn.log (label columns stripped) to ``rows`` rows."""
    if out.exists():
        return out
    header: list[bytes] = []
    body: list[bytes] = []
    close = b""
    with gzip.open(data / SAMPLE, "rb") as f:
        for line in f:
            if line.startswith(b"#close"):
                close = line
            elif line.startswith(b"#"):
                if line.startswith((b"#fields", b"#types")):
                    line = line.rstrip(b"\n").split(b"   ")[0] + b"\n"  # drop "   label   detailed-label"
                header.append(line)
            else:
                body.append(line.rstrip(b"\n").split(b"   ")[0] + b"\n")
    tmp = out.with_suffix(".part")
    with open(tmp, "wb") as f:
        f.writelines(header)
        written = 0
        while written < rows:
            take = body[: rows - written]
            f.writelines(take)
            written += len(take)
        f.write(close)
    tmp.rename(out)
    return out


def run_measured(code: str, path: Path) -> tuple[float, float, str]:
    """Run one route in a fresh process; its wall time, its own peak RSS (MB, ``os.wait4``) and its output."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"route failed:\n{err.decode()}")
    return wall, usage.ru_maxrss / 1024, out.decode().strip()


def alternate(path: Path, rows: int, runs: int, routes: dict[str, str],
              indent: str = "") -> dict[str, tuple[float, float]]:
    """Run the routes in turn, ``runs`` times, each checked to return ``rows`` rows; median (wall, RSS) per route.

    Alternating run by run spreads machine noise over every route alike (also used by parse_json.py).
    """
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in routes}
    for i in range(runs):
        for name, code in routes.items():
            wall, rss, out = run_measured(code, path)
            if int(out) != rows:
                raise SystemExit(f"{name} returned {out} rows, expected {rows}")
            results[name].append((wall, rss))
            print(f"{indent}run {i + 1}: {name:26s} {wall:6.2f} s  {rss:7.0f} MB", flush=True)
    return {n: (statistics.median(w for w, _ in r), statistics.median(m for _, m in r)) for n, r in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "watchtower-bench")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = make_input(args.data, args.rows, args.workdir / f"conn-iot23-tiled-{args.rows}.log")
    print(f"input: {path} ({path.stat().st_size / 1e6:.0f} MB, {args.rows} rows)")
    print(f"  = the real IoT-23 capture 34-1 conn.log ({SAMPLE}) tiled, label columns stripped")
    med = alternate(path, args.rows, args.runs, ROUTES)
    ours, zat, arrow = med["watchtower read_log"], med["zat LogToDataFrame"], med["pyarrow.csv + ArrowDtype"]
    print(f"\nmedians over {args.runs} alternating runs (whole process, {os.cpu_count()} CPUs):")
    for name, (wall, rss) in med.items():
        print(f"  {name:26s} {wall:6.2f} s  peak RSS {rss:7.0f} MB")
    print(f"  zat / read_log      = {zat[0] / ours[0]:.2f}x   (target >= 2.0)")
    print(f"  read_log / pyarrow  = {ours[0] / arrow[0]:.2f}x   (target <= 1.3)")
    print(f"  read_log RSS / zat  = {ours[1] / zat[1]:.2f}    (target <= 1.0)")


if __name__ == "__main__":
    main()
