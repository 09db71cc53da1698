"""``watchtower run``: execute the phase notebooks with papermill and record the run."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from . import settings_from


def parse_params(pairs: tuple[str, ...]) -> dict[str, object]:
    """``-p name value`` pairs -> notebook parameters (numbers and true/false are typed)."""
    import yaml

    params: dict[str, object] = {}
    for name, value in zip(pairs[::2], pairs[1::2]):
        params[name] = yaml.safe_load(value) if value else value
    return params


@click.command("run")
@click.option("--phases", default="1-7", show_default=True,
              help="Which phases: 1 collect, 2 parse+store, 3 features, 4 supervised, 5 unsupervised, "
                   "6 detect, 7 weekly report, 0 explore. A range (1-7), a list (2,6) or both (1-3,6).")
@click.option("--week", metavar="YYYY-Www", default=None,
              help="ISO week to work on, e.g. 2026-W48 (Monday 00:00 UTC to the next Monday).")
@click.option("--start", metavar="ISO", default=None, help="Start of the period (inclusive), e.g. 2026-11-23.")
@click.option("--end", metavar="ISO", default=None, help="End of the period (exclusive).")
@click.option("-p", "--parameter", "params", nargs=2, multiple=True, metavar="NAME VALUE",
              help="Extra notebook parameter, read as YAML: -p max_rows 10000, -p labelled_paths '[a.labeled, b.labeled]' (repeatable).")
@click.option("--report/--no-report", default=True, show_default=True,
              help="After phase 7, render the HTML and PDF report (as `watchtower report`).")
@click.option("--pdf/--no-pdf", default=True, show_default=True, help="With --report, also print the PDF.")
@click.option("--notebooks", "notebooks", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None, help="Folder of your own NN_name.ipynb phase notebooks (default: the shipped notebooks/).")
@click.pass_context
def run(ctx: click.Context, phases: str, week: str | None, start: str | None, end: str | None,
        params: tuple[tuple[str, str], ...], report: bool, pdf: bool, notebooks: Path | None) -> None:
    """Run the pipeline's notebooks, in order, into runs/<run-id>/.

    Each phase is a notebook under notebooks/ executed with papermill
    (kernel python3) into runs/<run-id>/NN_name.ipynb, leaving its figures in
    NN_name.json; runs/<run-id>/run.json records the parameters, the period
    and the time and status of each phase.

    The period: --week, or --start/--end; with neither, the ISO week that
    holds the newest data in the store (decided after phase 2 has ingested).

    A failing phase stops the run: the message names the executed notebook and
    the failing cell (open it to see the traceback), and the exit code is 1.
    """
    from ..errors import PhaseError
    from ..runner import run_phases

    settings = settings_from(ctx)
    flat = tuple(v for pair in params for v in pair)
    total = {"n": 0}

    def progress(event: str, phase) -> None:
        if event == "start":
            total["n"] += 1
            click.echo(f"[{total['n']}] {phase.name} ...", err=True)
        elif event == "ok":
            click.echo(f"[{total['n']}] {phase.name} done in {phase.seconds:.1f} s", err=True)
        else:
            click.echo(f"[{total['n']}] {phase.name} FAILED after {phase.seconds:.1f} s", err=True)

    try:
        record = run_phases(settings, phases, start, end, week=week, parameters=parse_params(flat),
                            progress=progress, progress_bar=sys.stderr.isatty(), notebooks=notebooks)
    except PhaseError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(1)
    click.echo(f"run {record.run_id} ok: {record.run_dir / 'run.json'}")
    if record.period:
        click.echo(f"period {record.period['label']}: {record.period['start']} .. {record.period['end']}")
    if report and any(p.number == 7 for p in record.phases):
        from .report import render_for_run

        files = render_for_run(settings, record, pdf=pdf)
        click.echo(f"report: {files.html}")
        if files.pdf:
            click.echo(f"report: {files.pdf}")
