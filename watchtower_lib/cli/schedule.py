"""``watchtower schedule``: run the config's jobs on their cron expressions, or print OS units."""
from __future__ import annotations

from pathlib import Path

import click

from .._atomic import write_text_atomic
from . import settings_from


@click.command("schedule")
@click.option("--print", "print_kind", type=click.Choice(["crontab", "systemd"]), default=None,
              help="Print cron lines, or systemd service and timer units, instead of running the scheduler.")
@click.option("--write", "write_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --print systemd: write the unit files into this folder (e.g. ~/.config/systemd/user).")
@click.option("--run-job", "job_name", metavar="NAME", default=None,
              help="Run one job once, now, under its lock (what the printed cron lines and units call).")
@click.option("--for", "duration", type=float, default=None, metavar="SECONDS",
              help="Stop the scheduler after this many seconds (default: run until Ctrl-C).")
@click.pass_context
def schedule(ctx: click.Context, print_kind: str | None, write_dir: Path | None, job_name: str | None,
             duration: float | None) -> None:
    """Run the pipeline on a schedule: the `schedule:` jobs of the config.

    Each job names phases and a cron expression (local time), e.g.

    \b
      schedule:
        - {name: collect, phases: "1-2", cron: "*/15 * * * *"}
        - {name: detect,  phases: "3-6", cron: "0 * * * *"}
        - {name: report,  phases: "7",   cron: "0 6 * * 1"}

    Every run is recorded in runs/ like `watchtower run`. A job never overlaps
    itself, even across processes (a lock file in runs/.locks/): a run due while
    the previous one still works is skipped and logged. A failed run is logged
    with its notebook and failing cell, and the scheduler carries on.

    Sites that prefer the operating system's scheduler: --print crontab or
    --print systemd (the lines and units call `watchtower schedule --run-job`).
    """
    from .. import schedule as sched

    settings = settings_from(ctx)
    if print_kind == "crontab":
        click.echo(sched.crontab(settings), nl=False)
        return
    if print_kind == "systemd":
        units = sched.systemd_units(settings)
        if write_dir is not None:
            write_dir.mkdir(parents=True, exist_ok=True)
            for name, text in units.items():
                write_text_atomic(write_dir / name, text)
                click.echo(str(write_dir / name))
            click.echo("enable with: systemctl [--user] daemon-reload && systemctl [--user] enable --now "
                       + " ".join(n for n in units if n.endswith(".timer")), err=True)
            return
        for name, text in units.items():
            click.echo(f"# ---- {name} ----\n{text}")
        return
    if write_dir is not None:
        raise click.UsageError("--write goes with --print systemd")
    if job_name is not None:
        outcome = sched.run_job(settings, sched.find_job(settings, job_name))
        click.echo(f"job {outcome.job}: {outcome.status}" + (f" (run {outcome.run_id})" if outcome.run_id else ""))
        if outcome.status == "failed":
            click.echo(f"error: {outcome.error}", err=True)
            ctx.exit(1)
        return
    for job in settings.schedule:
        click.echo(f"{job.name}: phases {job.phases} on \"{job.cron}\"", err=True)
    outcomes = sched.schedule(settings, duration=duration)
    failed = sum(o.status == "failed" for o in outcomes)
    click.echo(f"scheduler stopped: {len(outcomes)} runs, {failed} failed, "
               f"{sum(o.status == 'skipped' for o in outcomes)} skipped", err=True)
