"""``watchtower detect``: score stored connections, store alerts and incidents, notify, index."""
from __future__ import annotations

import logging
from typing import Any

import click

from . import settings_from

log = logging.getLogger(__name__)

EXIT_NOTIFY_FAILED = 3  # alerts stored, but a notification channel failed (it retries next run)


@click.command("detect")
@click.option("--start", metavar="ISO", default=None,
              help="Only connections from this time on (e.g. 2026-01-05 or 2026-01-05T10:00Z). Default: all.")
@click.option("--end", metavar="ISO", default=None, help="Only connections before this time. Default: all.")
@click.option("--notify/--no-notify", "send", default=None,
              help="Send webhook/email for new incidents. Default: when a channel is configured.")
@click.pass_context
def detect(ctx: click.Context, start: str | None, end: str | None, send: bool | None) -> None:
    """Run both models over stored conn logs and record what they flag.

    Loads conn rows from the store, scores them with the latest supervised
    (known attacks) and unsupervised (anomalies) models, adds new alerts to the
    alert store (a rerun adds nothing), groups them into incidents (one per
    source, destination and kind within the incident window; a scan is one
    incident), notifies configured channels, and indexes alerts into
    Elasticsearch when it is configured (if it is down, indexing is retried
    by the next run). Prints a summary of incidents.

    Exit codes: 0 done; 2 error (nothing stored, e.g. no model or no data);
    3 alerts stored but a notification failed (retried next run).
    """
    from ..alert_store import AlertStore
    from ..detection import run
    from ..notify import configured, notify_open

    settings = settings_from(ctx)
    result = run(settings, start, end, progress=None)
    click.echo(f"{result.summary()}  -> {settings.alerts_db}")
    if send and not configured(settings.notifications):
        click.echo("warning: --notify given but no notification channel is configured", err=True)
    report = notify_open(settings, send=send)
    if report.channels:
        click.echo(f"notifications: {report.summary()}")
    open_incidents = AlertStore(settings.alerts_db).incidents()
    _print_table(open_incidents[open_incidents["status"] != "closed"])
    ctx.exit(0 if report.ok else EXIT_NOTIFY_FAILED)


def _print_table(incidents: Any, limit: int = 20) -> None:
    if incidents.empty:
        click.echo("no open incidents")
        return
    click.echo(f"{'incident':14} {'status':12} {'severity':8} {'kind':7} {'source':>15} -> "
               f"{'destination':15} {'alerts':>7}  last seen")
    for row in incidents.head(limit).itertuples():
        click.echo(f"{row.incident_id[:14]:14} {row.status:12} {row.max_severity:8} {row.kind:7} "
                   f"{str(row.src_ip):>15} -> {str(row.dst_ip):15} {row.count:>7}  {row.last_seen:%Y-%m-%d %H:%M}")
    if len(incidents) > limit:
        click.echo(f"... {len(incidents) - limit} more: watchtower alerts list")
