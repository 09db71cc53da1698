"""``watchtower report``: render the executed weekly-report notebook to HTML and PDF."""
from __future__ import annotations

from pathlib import Path

import click

from . import settings_from


def render_for_run(settings, record, *, pdf: bool = True):
    """Render a run's executed ``07_weekly_report`` to ``<reports_dir>/<period>/weekly-report.*``."""
    from ..render import render_report, report_dir

    label = record.period["label"] if record.period else record.run_id
    return render_report(record.notebook(7), report_dir(settings.reports_dir, label), pdf=pdf,
                         title=f"Watch Tower weekly report {label}")


def find_report_run(runs_dir: Path, period: str | None):
    """The newest run whose phase 7 succeeded (for ``period`` when given), or None."""
    from ..runner import list_runs

    for record in reversed(list_runs(runs_dir)):
        phase = next((p for p in record.phases if p.number == 7), None)
        if phase is None or phase.status != "ok":
            continue
        if period is None or (record.period and record.period["label"] == period):
            return record
    return None


@click.command("report")
@click.option("--period", metavar="LABEL", default=None,
              help="Which report: a period label as in runs/*/run.json, e.g. 2026-W48. "
                   "Default: the newest successful weekly-report run.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Render the report of this run folder (runs/<run-id>) instead.")
@click.option("--execute", is_flag=True,
              help="If no run has a report for --period (an ISO week), run phase 7 for it first.")
@click.option("--pdf/--no-pdf", default=True, show_default=True, help="Also print the PDF with headless Chromium.")
@click.pass_context
def report(ctx: click.Context, period: str | None, run_dir: Path | None, execute: bool, pdf: bool) -> None:
    """Render the weekly report: reports/<period>/weekly-report.html and .pdf.

    Takes the executed 07_weekly_report notebook of a run (`watchtower run`),
    exports it without code through the template in templates/ (figures stay
    interactive and work offline: plotly.js is inlined once), and prints that
    HTML to an A4 PDF with headless Chromium (apt-get install chromium).
    """
    from ..errors import WatchtowerError
    from ..runner import RunRecord, run_phases

    settings = settings_from(ctx)
    if run_dir is not None:
        record = RunRecord.load(run_dir)
    else:
        record = find_report_run(settings.runs_dir, period)
        if record is None and execute:
            if period is None or "-W" not in period.upper():
                raise click.UsageError("--execute needs --period as an ISO week, e.g. 2026-W48")
            record = run_phases(settings, "7", week=period)
        if record is None:
            which = f"for {period}" if period else "yet"
            raise WatchtowerError(f"no successful weekly-report run {which} under {settings.runs_dir}: "
                                  f"run `watchtower run --phases 7{' --week ' + period if period else ''}` "
                                  f"(or add --execute)")
    files = render_for_run(settings, record, pdf=pdf)
    click.echo(str(files.html))
    if files.pdf:
        click.echo(str(files.pdf))
