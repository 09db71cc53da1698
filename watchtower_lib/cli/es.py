"""``watchtower es``: set up Elasticsearch and copy Zeek logs into it.

Thin wrappers over :mod:`watchtower_lib.es`; each is one library call in a notebook.
"""
from __future__ import annotations

from pathlib import Path

import click

from . import settings_from


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def es() -> None:
    """Elasticsearch: index templates, indexing Zeek logs, node health.

    The node comes from elasticsearch.url in the config or $WATCHTOWER_ES_URL.
    For a local test node run `scripts/es-node start` and export the URL it prints.
    """


@es.command("status")
@click.pass_context
def status(ctx: click.Context) -> None:
    """Show the cluster's health (exit code 2 if it cannot be reached)."""
    from .. import es as wes

    health = wes.ping(settings=settings_from(ctx))
    click.echo(f"{health['cluster_name']}: {health['status']}, {health['number_of_nodes']} node(s), "
               f"{health['active_shards']} active shard(s)")


@es.command("install-templates")
@click.pass_context
def install_templates(ctx: click.Context) -> None:
    """Install or update the ECS index templates for Zeek logs and alerts (safe to repeat)."""
    from .. import es as wes

    names = wes.install_templates(settings=settings_from(ctx))
    click.echo(f"installed {len(names)} index templates: {', '.join(names)}")


@es.command("index")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--log-type", default=None,
              help="Zeek log type (conn, dns, ...). Default: the #path in each file's header.")
@click.option("--threads", default=4, show_default=True, help="Bulk requests in flight at once.")
@click.option("--sensor", default=None, metavar="NAME",
              help="Sensor name written to the _sensor column, as `watchtower ingest --sensor` does "
                   "(default: local). Use the name the files are ingested under, so that `watchtower es "
                   "sync` finds them already indexed.")
@click.pass_context
def index(ctx: click.Context, paths: tuple[Path, ...], log_type: str | None, threads: int,
          sensor: str | None) -> None:
    """Index Zeek log files (TSV or JSON, .gz too) into Elasticsearch.

    Re-running on the same files adds nothing: every row has a fixed document id.
    Each row is tagged with its sensor (--sensor) exactly as the store tags it,
    so a file indexed here and again from the store (phase 2, `watchtower es
    sync`) under the same sensor is one set of documents, not two. Rows
    Elasticsearch rejects (e.g. a value that does not fit its field) are
    counted and shown, and make the exit code 1.
    """
    from .. import es as wes
    from ..store import LOCAL_SENSOR
    from ..zeek import read_log

    settings = settings_from(ctx)
    wes.install_templates(settings=settings)
    rejected = 0
    for path in paths:
        df = read_log(path)
        kind = log_type or df.attrs.get("log_type")
        if not kind:
            raise click.UsageError(f"{path}: no #path header; pass --log-type")
        report = wes.index_logs(df, kind, settings=settings, threads=threads,
                                    sensor=sensor or LOCAL_SENSOR)
        rejected += report.failed
        click.echo(f"{path}: {kind}, {report.created} new, {report.existing} already indexed, "
                   f"{report.failed} rejected")
        for sample in report.samples[:3]:
            click.echo(f"  rejected {sample['_id']}: {sample['type']}: {sample['reason']}", err=True)
    if rejected:
        ctx.exit(1)


@es.command("sync")
@click.option("--start", default=None, help="Only rows with ts >= START (ISO date/time, UTC); sends the window again.")
@click.option("--end", default=None, help="Only rows with ts < END (ISO date/time, UTC); sends the window again.")
@click.option("--log-type", "log_types", multiple=True, help="Only these log types (repeatable). Default: all.")
@click.option("--all", "everything", is_flag=True,
              help="Send every stored row again instead of only the parts not yet acknowledged.")
@click.pass_context
def sync(ctx: click.Context, start: str | None, end: str | None, log_types: tuple[str, ...],
         everything: bool) -> None:
    """Copy the Parquet store into Elasticsearch; rows already there are skipped.

    By default only the store parts this node and index prefix have not
    acknowledged (the ledger _es_synced.json in the store) are sent, as phase 2
    does. Run it after Elasticsearch was down to catch up: nothing the store has
    is lost. Exit code 1 when rows were rejected, 2 when the node is unreachable.
    """
    from .. import es as wes

    settings = settings_from(ctx)
    if not (everything or start or end):
        if not settings.elasticsearch.enabled:
            raise click.UsageError("elasticsearch.url is not set: set it in the config or WATCHTOWER_ES_URL "
                                   "(a local test node: scripts/es-node start)")
        synced = wes.sync_pending(settings, log_types=log_types or None)
        for log_type, bulk in synced.reports.items():
            click.echo(f"{log_type}: {bulk.created} new, {bulk.existing} already indexed, {bulk.failed} rejected")
        click.echo(synced.message, err=not synced.ok)
        if not synced.ok:
            ctx.exit(2)
        if synced.failed:
            ctx.exit(1)
        return
    wes.install_templates(settings=settings)
    reports = wes.sync_store(start=start, end=end, log_types=log_types or None, settings=settings)
    for log_type, bulk in reports.items():
        click.echo(f"{log_type}: {bulk.created} new, {bulk.existing} already indexed, {bulk.failed} rejected")
    if any(r.failed for r in reports.values()):
        ctx.exit(1)
