"""Build watchtower_lib/schemas/zeek_types.json from real Zeek TSV headers.

Why: Zeek JSON logs carry no types, so the reader gives the columns of Zeek's
standard logs the types their TSV twins declare. This script reads the
``#path``/``#fields``/``#types`` headers of the real TSV logs in the shared corpus
(no rows) and writes log type -> {column: Zeek type}.

Sources, first one wins for a column:
1. ``multi/wrccdc-2018/zeek-tsv/*.log.gz`` - Zeek 6.2.0 (32 log types);
2. ``labelled/stratosphere-sdt/*/*.labeled`` and ``scenarios/stratosphere-sdt/*/*.log``
   - newer Zeek conn/http/files/dns/ssl...; the label columns (``label``,
   ``detailedlabel``) are dropped, they are not Zeek's;
3. ``multi/zat-samples/tsv/*.log`` - Bro 2.x (``table[T]`` written as ``set[T]``).

Usage: python scripts/gen_zeek_schema.py [SHARED_DATA_DIR]
(default ../shared/data next to the repository).
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "watchtower_lib" / "schemas" / "zeek_types.json"
LABEL_COLUMNS = {"label", "detailedlabel", "detailed-label"}


def headers(path: Path) -> tuple[str | None, list[str], list[str]]:
    """#path, #fields and #types of the first header block (reads header lines only)."""
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    log_path, fields, types = None, [], []
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("#"):
                break
            name, _, value = line.rstrip("\r\n").partition("\t")
            if name == "#path":
                log_path = value
            elif name == "#fields":
                fields = value.split("\t")
            elif name == "#types":
                types = value.split("\t")
    return log_path, fields, types


def normalise(zeek_type: str) -> str:
    return "set[" + zeek_type[6:] if zeek_type.startswith("table[") else zeek_type


def main(data: Path) -> dict[str, dict[str, str]]:
    groups = [
        sorted((data / "multi/wrccdc-2018/zeek-tsv").glob("*.log.gz")),
        sorted((data / "labelled/stratosphere-sdt").glob("*/*.labeled"))
        + sorted((data / "scenarios/stratosphere-sdt").glob("*/*.log")),
        sorted((data / "multi/zat-samples/tsv").glob("*.log")),
    ]
    logs: dict[str, dict[str, str]] = {}
    for group in groups:
        for path in group:
            log_path, fields, types = headers(path)
            if not log_path or not fields or len(fields) != len(types):
                continue  # JSON file, or no usable header
            columns = logs.setdefault(log_path, {})
            for name, ztype in zip(fields, types):
                if name not in LABEL_COLUMNS:
                    columns.setdefault(name, normalise(ztype))
    return dict(sorted(logs.items()))


if __name__ == "__main__":
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"
    logs = main(shared)
    doc = {
        "about": "Zeek column types of standard logs, from real TSV headers; made by scripts/gen_zeek_schema.py",
        "logs": logs,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(logs)} log types, {sum(map(len, logs.values()))} columns")
