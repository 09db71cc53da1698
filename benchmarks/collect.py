"""Benchmark: `watchtower collect` over SSH vs OpenSSH's `sftp` client, same files, same server, same run.

What it does, so the figure can be checked:

1. Builds a ~200 MB folder of real Zeek logs by **copying the shared corpus
   (../shared/data, 166 files, 15.8 MB) repeatedly** into ``copy-NN/`` folders
   until the size is reached. Nothing is generated; the copies are byte-identical.
2. Starts a private ``/usr/sbin/sshd`` on 127.0.0.1 (``tests/sshd.py``).
3. Alternates, ``--rounds`` times: our collector (``collect()`` into an empty
   raw dir, with its SHA-256 checks, fsync and manifest) and
   ``sftp -b batch`` with ``get -r`` of the same folder into an empty dir.
   Both start from a cold connection; the output folders are removed between
   runs and ``sync`` flushes the page cache's dirty pages (outside the timing),
   so neither run pays for the writeback of the one before.
4. Prints each run, the medians, the ratio of the medians ours / sftp and the
   median of the per-round ratios (robust when other work loads the machine
   during the run). Target: <= 1.2.

Run: ``.venv/bin/python benchmarks/collect.py [--size-mb 200] [--rounds 5]`` (needs root or
an sshd that may run as you, and the `sftp` client).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from sshd import SshServer  # noqa: E402

from watchtower_lib.collect import collect  # noqa: E402
from watchtower_lib.config import SensorConfig, Settings  # noqa: E402

SHARED = Path(os.environ.get("WATCHTOWER_SHARED_DATA", ROOT.parent / "shared" / "data"))


def build_corpus(target: Path, size_mb: int) -> tuple[int, int]:
    """Copy every file of the shared corpus into copy-01/, copy-02/, ... until ``size_mb`` is reached."""
    files = sorted(p for p in SHARED.rglob("*") if p.is_file())
    total, count, n = 0, 0, 0
    while total < size_mb * 1024 * 1024:
        n += 1
        for src in files:
            dst = target / f"copy-{n:02d}" / src.relative_to(SHARED)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            total += dst.stat().st_size
            count += 1
    for folder in [target, *(p for p in target.rglob("*") if p.is_dir())]:
        folder.chmod(0o755)
    return count, total


def tree_digest(folder: Path) -> tuple[int, int, str]:
    """(files, bytes, SHA-256 over sorted relative names and contents) of a folder, skipping dot files."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    size = 0
    for p in files:
        data = p.read_bytes()
        size += len(data)
        h.update(p.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(data).digest())
    return len(files), size, h.hexdigest()


def run_ours(server: SshServer, data: Path, out: Path, parallel: int, processes: int) -> float:
    sensor = SensorConfig(name="bench", host=server.host, port=server.port, user=server.user,
                          key_file=server.client_key, known_hosts=server.known_hosts, remote_dir=str(data),
                          patterns=("**/*",), retries=0, parallel_files=parallel, processes=processes)
    settings = Settings(raw_dir=out, sensors=(sensor,))
    started = time.perf_counter()
    report = collect(settings)
    elapsed = time.perf_counter() - started
    if not report.ok:
        raise SystemExit(f"collector failed: {report.table()}")
    return elapsed


def run_sftp(server: SshServer, data: Path, out: Path) -> float:
    out.mkdir(parents=True)
    batch = out.parent / "sftp-batch"
    batch.write_text(f"get -r {data} {out}/\n")
    started = time.perf_counter()
    subprocess.run(["sftp", "-q", "-b", str(batch), "-i", str(server.client_key), "-P", str(server.port),
                    "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "BatchMode=yes",
                    f"{server.user}@{server.host}"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parallel-files", type=int, default=SensorConfig.parallel_files)
    parser.add_argument("--processes", type=int, default=SensorConfig.processes)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder, removed afterwards")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs the shared corpus at {SHARED}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="wt-bench-collect-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    try:
        data = work / "sensor-logs"
        count, size = build_corpus(data, args.size_mb)
        originals = sum(1 for p in SHARED.rglob("*") if p.is_file())
        print(f"corpus: {count} files, {size / 1e6:.1f} MB = the {originals} files of {SHARED} "
              f"copied {len(list(data.iterdir()))} times; load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs")
        with SshServer(work / "sshd") as server:
            ours, theirs = [], []
            for r in range(args.rounds):
                for name in (("ours", "sftp") if r % 2 == 0 else ("sftp", "ours")):
                    out = work / f"out-{name}"
                    shutil.rmtree(out, ignore_errors=True)
                    os.sync()  # start each run with no dirty pages left by the one before (writeback is shared)
                    if name == "ours":
                        ours.append(run_ours(server, data, out, args.parallel_files, args.processes))
                        if r == 0:
                            want, got = tree_digest(data), tree_digest(out / "bench")
                            assert want == got, f"collector output differs: {want} vs {got}"
                    else:
                        theirs.append(run_sftp(server, data, out))
                        if r == 0:
                            assert tree_digest(data) == tree_digest(out / data.name), "sftp output differs"
                    print(f"round {r + 1} {name}: {(ours if name == 'ours' else theirs)[-1]:.2f} s")
                    shutil.rmtree(out, ignore_errors=True)
        print(f"load average now {os.getloadavg()[0]:.1f}")
        mo, ms = statistics.median(ours), statistics.median(theirs)
        paired = statistics.median(o / t for o, t in zip(ours, theirs))
        print(f"median: watchtower collect {mo:.2f} s ({size / 1e6 / mo:.0f} MB/s), "
              f"sftp {ms:.2f} s ({size / 1e6 / ms:.0f} MB/s); ratio {mo / ms:.2f}x (target <= 1.2x); "
              f"median of the per-round ratios {paired:.2f}x")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
