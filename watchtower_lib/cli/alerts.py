"""``watchtower alerts list|show|ack|close``: the analyst's view of the alert store."""
from __future__ import annotations

import click

from . import settings_from


@click.group("alerts")
def alerts() -> None:
    """List incidents and their alerts, and acknowledge or close them.

    Incidents group the alerts of one source, destination and kind (a scan is
    one incident). Ids may be shortened to any unique prefix, as printed by
    `watchtower alerts list`.
    """


@alerts.command("list")
@click.option("--status", type=click.Choice(["new", "acknowledged", "closed", "open", "all"]), default="open",
              show_default=True, help="Which incidents: open = new + acknowledged.")
@click.option("--limit", type=int, default=50, show_default=True, help="Show at most this many.")
@click.pass_context
def list_(ctx: click.Context, status: str, limit: int) -> None:
    """List incidents, most severe and most recent first."""
    from ..alert_store import AlertStore
    from .detect import _print_table

    db = AlertStore(settings_from(ctx).alerts_db)
    incidents = db.incidents(None if status in ("open", "all") else status)
    if status == "open":
        incidents = incidents[incidents["status"] != "closed"]
    _print_table(incidents, limit=limit)


@alerts.command("show")
@click.argument("incident_id")
@click.option("--limit", type=int, default=20, show_default=True, help="Show at most this many alerts.")
@click.pass_context
def show(ctx: click.Context, incident_id: str, limit: int) -> None:
    """Show one incident's alerts with their explanations."""
    from ..alert_store import AlertStore
    from ..errors import StoreError

    db = AlertStore(settings_from(ctx).alerts_db)
    incidents = db.incidents()
    match = incidents[incidents["incident_id"].str.startswith(incident_id)]
    if len(match) != 1:
        raise StoreError(f"{'no' if match.empty else 'more than one'} incident matches {incident_id!r}")
    inc = match.iloc[0]
    click.echo(f"{inc.incident_id}  {inc.status}  {inc.max_severity}  {inc.kind}  {inc.src_ip} -> {inc.dst_ip}  "
               f"{inc['count']} alerts  {inc.first_seen:%Y-%m-%d %H:%M:%S} .. {inc.last_seen:%H:%M:%S}"
               + (f"  note: {inc.note}" if inc.note else ""))
    rows = db.alerts(incident_id=inc.incident_id).sort_values("score", ascending=False).head(limit)
    for a in rows.itertuples():
        click.echo(f"  {a.ts:%H:%M:%S} {a.uid} {a.dst_ip}:{a.dst_port}/{a.proto} score {a.score:.3f} "
                   f"{a.severity}: {a.explanation}")


def _status_command(name: str, status: str, what: str) -> click.Command:
    @click.command(name, help=f"{what} an incident (INCIDENT_ID or a unique prefix).")
    @click.argument("incident_id")
    @click.option("--note", default=None, help="Why (kept in the incident's history).")
    @click.pass_context
    def command(ctx: click.Context, incident_id: str, note: str | None) -> None:
        from ..alert_store import AlertStore

        full = AlertStore(settings_from(ctx).alerts_db).set_status(incident_id, status, note)
        click.echo(f"{full}: {status}")

    return command


alerts.add_command(_status_command("ack", "acknowledged", "Acknowledge"))
alerts.add_command(_status_command("close", "closed", "Close"))
alerts.add_command(_status_command("reopen", "new", "Reopen"))
