"""``watchtower demo``: ingest the sample logs in data/ and say what the store now holds.

``ingest_sample`` is the demo's first step as a function, so the full demo
(all seven phases, via the runner) can reuse it.
"""
from __future__ import annotations

import logging

import click

from ..config import Settings
from ..errors import StoreError
from ..store import IngestReport
from . import settings_from
from .ingest import format_table

log = logging.getLogger(__name__)

SAMPLE_SENSOR = "sample"


def ingest_sample(settings: Settings, *, include_labelled: bool = False,
                  progress: bool = False) -> IngestReport:
    """Ingest ``settings.data_dir/logs`` (and ``labelled/`` if asked) into ``settings.store_dir``.

    The labelled captures stay out of the store by default: training reads them
    directly (``labels.read_labelled``), and the store is what detection scans.
    Idempotent: a second call adds nothing.

    Raises
    ------
    StoreError
        ``data_dir`` holds no sample (neither ``logs/`` nor any log file).
    """
    from .. import store

    data = settings.data_dir
    if not data.is_dir():
        raise StoreError(f"sample data folder {data} does not exist (set data_dir in the config, "
                         f"or run from the repository root)")
    logs = data / "logs"
    paths = [logs] if logs.is_dir() else [data]
    if include_labelled and (data / "labelled").is_dir():
        paths.append(data / "labelled")
    log.info("ingesting the sample in %s into %s", ", ".join(map(str, paths)), settings.store_dir)
    return store.ingest(paths, settings.store_dir, sensor=SAMPLE_SENSOR, progress=progress)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--include-labelled", is_flag=True,
              help="Also ingest the labelled captures in data/labelled (normally only read for training).")
@click.option("--ingest-only", is_flag=True, help="Stop after ingesting and summarising the sample.")
@click.option("--pdf/--no-pdf", default=True, show_default=True,
              help="Also print the weekly report to PDF (needs Chromium: apt-get install chromium).")
@click.pass_context
def demo(ctx: click.Context, include_labelled: bool, ingest_only: bool, pdf: bool) -> None:
    """Run the demo: all seven phases on the sample logs shipped in data/.

    Ingests data/logs (real Zeek logs: Stratosphere scenarios, ZAT samples,
    WRCCDC 2018) into the store and prints rows per log type and the time
    span; then runs phases 1-7 as `watchtower run` does (training the forest
    on the labelled Stratosphere captures in data/labelled) and prints where
    the HTML and PDF weekly report are. Safe to run again: files already in
    the store are skipped and alerts are not duplicated.
    """
    from .. import store

    settings = settings_from(ctx)
    report = ingest_sample(settings, include_labelled=include_labelled, progress=True)
    click.echo(f"ingested {report.files_ingested} file(s) ({report.rows:,} rows), "
               f"{report.files_skipped} already in the store, in {report.seconds:.1f} s")
    table = store.summary(settings.store_dir)
    rows = [(r.log_type, int(r.rows), int(r.files), _day(r.first_ts), _day(r.last_ts))
            for r in table.itertuples()]
    click.echo("")
    click.echo(format_table(["log type", "rows", "files", "first", "last"], rows))
    click.echo("")
    click.echo(f"store: {settings.store_dir.resolve()}  ({int(table['rows'].sum()):,} rows in "
               f"{len(table)} log types)")
    click.echo("1970-01-01 times are real: some captures use timestamps relative to their start.")
    if ingest_only:
        return
    from .run import run as run_command

    click.echo("")
    ctx.invoke(run_command, phases="1-7", pdf=pdf and _has_chromium())


def _has_chromium() -> bool:
    from ..errors import IntegrationError
    from ..render import find_chromium

    try:
        find_chromium()
    except IntegrationError as exc:
        click.echo(f"{exc}: writing the HTML report only", err=True)
        return False
    return True


def _day(value: object) -> str:
    import pandas as pd

    return "-" if value is None or pd.isna(value) else pd.Timestamp(value).strftime("%Y-%m-%d %H:%M")
