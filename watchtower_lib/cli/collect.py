"""``watchtower collect``: pull new Zeek logs from the sensors, optionally straight into the store.

A thin wrapper over :func:`watchtower_lib.collect.collect` (and
:func:`~watchtower_lib.collect.ingest_new` for ``--ingest``).
"""
from __future__ import annotations

import sys

import click

from . import settings_from
from .ingest import format_table


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--sensor", default=None, metavar="NAME", help="Collect only this sensor (default: all in the config).")
@click.option("--ingest", "do_ingest", is_flag=True,
              help="Add the files that arrived or changed in this run to the Parquet store.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar in bytes (default: when stderr is a terminal).")
@click.pass_context
def collect(ctx: click.Context, sensor: str | None, do_ingest: bool, progress: bool | None) -> None:
    """Download new and changed Zeek logs from the sensors into RAW_DIR/<sensor>/.

    Sensors come from the `sensors:` list of the config (kind ssh: host, port,
    user, key_file, remote_dir, patterns, known_hosts; kind local: a folder).
    Only files that are new or changed since the last run travel; a transfer
    cut off half-way resumes; a log that grew or was rotated is fetched again
    and the previous copy is kept in .superseded/<name>.prev-<time>.<ext>
    beside it (a hidden folder the store does not ingest, so rows are not
    stored twice). Host keys must already be in known_hosts (or set
    trust_on_first_use: true once).

    zeekctl's logs/current is a symlink into spool/, and symlinks that leave
    remote_dir are refused: for live logs set remote_dir to the Zeek prefix
    (e.g. /opt/zeek) with patterns such as logs/*/*.log.gz and spool/zeek/*.log.

    Prints one row per sensor (files, bytes, seconds, errors) and every
    problem below it. Exit status: 0 when every sensor collected everything,
    1 when a sensor failed or some files could not be fetched (the others
    still arrive), 2 on a config error.
    """
    from ..collect import collect as run_collect
    from ..collect import ingest_new

    settings = settings_from(ctx)
    show = sys.stderr.isatty() if progress is None else progress
    report = run_collect(settings, sensor, progress=show)
    headers = ["sensor", "status", "files", "bytes", "seconds", "unchanged", "errors"]
    rows = [[s.name, s.status, s.files, s.bytes, round(s.seconds, 1), s.unchanged, len(s.errors) + len(s.refused)]
            for s in report.sensors]
    click.echo(format_table(headers, rows))
    for result in report.sensors:
        for refusal in result.refused:
            click.echo(f"{result.name}: refused {refusal}", err=True)
        for error in result.errors:
            click.echo(f"{result.name}: error: {error}", err=True)
    failed = not report.ok
    if do_ingest:
        ingested = ingest_new(report, settings, progress=show)
        if not ingested:
            click.echo("--ingest: no new files to add to the store")
        for name, stored in ingested.items():
            click.echo(f"{name}: {stored.files_ingested} file(s) ingested, {stored.files_skipped} already in "
                       f"the store, {stored.rows:,} rows -> {settings.store_dir}")
            for path, message in stored.errors.items():
                click.echo(f"{name}: not ingested: {path}: {message}", err=True)
                failed = True
    if failed:
        ctx.exit(1)
