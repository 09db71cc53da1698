"""``watchtower detect``: score stored connections, store alerts and incidents, notify, index."""
from __future__ import annotations

import logging
from pathlib import Path
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
    from .. import alerts as alerts_mod
    from .. import models, store
    from ..alert_store import AlertStore
    from ..errors import ModelError

    settings = settings_from(ctx)
    conn = store.load(settings.store_dir, "conn", start=start, end=end)
    if len(conn) and "dns" in store.log_types(settings.store_dir):  # as in training: DNS features by uid
        from ..features import join_logs

        conn = join_logs(conn, dns=store.load(settings.store_dir, "dns", start=start, end=end,
                                              columns=["uid", "query", "rcode_name"]))
    supervised = _latest(models, settings.models_dir, "supervised")
    unsupervised = _latest(models, settings.models_dir, "unsupervised")
    if supervised is None and unsupervised is None:
        raise ModelError(f"no trained model under {settings.models_dir}: run "
                         f"`watchtower train --supervised` and/or `watchtower train --unsupervised` first")
    found = alerts_mod.detect(conn, supervised, unsupervised,
                              supervised_threshold=settings.detection.supervised_threshold)
    db = AlertStore(settings.alerts_db)
    added = db.upsert_alerts(found)
    created = 0
    if len(found):  # regroup every stored alert of these sources, so incidents span runs
        stored = db.alerts()
        stored = stored[stored["src_ip"].isin(set(found["src_ip"].dropna()))]
        incidents = alerts_mod.group_incidents(stored, settings.detection.incident_window_minutes)
        created = db.upsert_incidents(incidents)
    click.echo(f"{len(conn):,} connections scored: {len(found):,} alerts ({added:,} new), "
               f"{created:,} new incidents  -> {settings.alerts_db}")
    if settings.elasticsearch.enabled:
        _index_pending(db, settings)
    code = 0
    open_incidents = db.incidents()
    open_incidents = open_incidents[open_incidents["status"] != "closed"]
    configured = settings.notifications.webhook is not None or settings.notifications.email is not None
    if send and not configured:
        click.echo("warning: --notify given but no notification channel is configured", err=True)
    if (send is None or send) and configured:
        from ..notify import notify

        report = notify(open_incidents, settings.notifications, settings.alerts_db)
        click.echo(f"notifications: {report.summary()}")
        code = 0 if report.ok else EXIT_NOTIFY_FAILED
    _print_table(open_incidents)
    ctx.exit(code)


def _latest(models: Any, models_dir: Path, kind: str) -> Any:
    """The newest model of ``kind`` as ``(pipeline, card)``, or None when none was trained yet."""
    path = models.latest(models_dir, kind)
    if path is None:
        log.info("no %s model under %s", kind, models_dir)
        return None
    model = models.load(path)  # ModelError when unsafe, stale or changed: better stop than score wrongly
    card = models.read_card(path)
    log.info("%s model %s (threshold %s)", kind, card.get("version"), card.get("threshold"))
    return model, card


def _index_pending(db: Any, settings: Any) -> None:
    """Index every alert Elasticsearch lacks; on failure warn and keep them pending for the next run."""
    from ..alert_store import index_pending
    from ..errors import IntegrationError, MissingDependencyError

    try:
        report = index_pending(db, settings=settings)
    except (IntegrationError, MissingDependencyError) as exc:
        click.echo(f"warning: alerts not indexed into Elasticsearch ({exc}); {len(db.pending_es()):,} alerts "
                   f"stay pending in {settings.alerts_db} and the next run indexes them", err=True)
        return
    if report.failed:
        click.echo(f"warning: Elasticsearch rejected {report.failed} of {report.total} alerts "
                   f"({dict(report.errors)}); they stay pending", err=True)
    elif report.total:
        click.echo(f"elasticsearch: {report.total:,} alerts indexed ({report.created:,} new)")


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
