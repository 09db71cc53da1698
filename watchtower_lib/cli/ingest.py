"""``watchtower ingest``: add Zeek logs to the Parquet store, with a progress bar and a summary.

A thin wrapper over :func:`watchtower_lib.store.ingest`; everything it does is
also one library call in a notebook.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from . import settings_from


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table (numbers right-aligned) for terminal summaries."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) and bool(rows) for i in range(len(headers))]
    lines = []
    for k, row in enumerate(cells):
        parts = [c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return "" if value is None else str(value)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--store", "store_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Parquet store to add to (default: store_dir from the config, ./store).")
@click.option("--sensor", default=None, metavar="NAME",
              help="Sensor name written to the _sensor column (default: local).")
@click.option("--skip-bad-rows", is_flag=True,
              help="Drop malformed rows (counted and warned about) and go on past unreadable files, "
                   "instead of stopping at the first problem.")
@click.pass_context
def ingest(ctx: click.Context, paths: tuple[Path, ...], store_dir: Path | None, sensor: str | None,
           skip_bad_rows: bool) -> None:
    """Add Zeek logs to the Parquet store.

    PATH may be a log file (TSV or JSON, plain or .gz) or a folder, searched
    recursively; files in folders that are not Zeek logs are skipped. A file
    whose content is already in the store is skipped, so running this again
    on the same folder adds nothing. Rows land in
    STORE/<log_type>/date=YYYY-MM-DD/ for fast time-range queries.

    Exit status: 0 when every file was read, 1 when some were skipped as
    unreadable (--skip-bad-rows), 2 on an error (one line naming the file).
    """
    from .. import store

    settings = settings_from(ctx)
    target = store_dir or settings.store_dir
    report = store.ingest(list(paths), target, sensor=sensor,
                          errors="skip" if skip_bad_rows else "raise", progress=True)
    if report.rows_by_log_type:
        rows = sorted(report.rows_by_log_type.items())
        click.echo(format_table(["log type", "rows"], [*rows, ("total", report.rows)]))
    click.echo(f"{report.files_ingested} file(s) ingested, {report.files_skipped} already in the store, "
               f"{report.files_written} Parquet file(s) written in {report.seconds:.1f} s -> {target}")
    if report.not_logs:
        click.echo(f"{len(report.not_logs)} file(s) skipped as not Zeek logs (see the log for names)")
    for path, message in report.errors.items():
        click.echo(f"unreadable: {message}" if path in message else f"unreadable: {path}: {message}", err=True)
    if report.errors:
        ctx.exit(1)
