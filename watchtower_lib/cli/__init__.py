"""The ``watchtower`` command: a click group whose subcommands each live in their own module.

Subcommands are imported only when invoked (or listed by ``--help``), so
``watchtower ingest`` does not pay for scikit-learn or paramiko.
"""
from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click

from ..errors import WatchtowerError

# command name -> "module:attribute" under watchtower_lib.cli
_COMMANDS: dict[str, str] = {
    "ingest": "ingest:ingest",
    "collect": "collect:collect",
    "show": "show:show",
    "demo": "demo:demo",
    "detect": "detect:detect",
    "alerts": "alerts:alerts",
    "run": "run:run",
    "schedule": "schedule:schedule",
    "report": "report:report",
    "es": "es:es",
    "train": "train:train",
    "evaluate": "evaluate:evaluate",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(f"{__name__}.{module_name}")
        return getattr(module, attr)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              envvar="WATCHTOWER_CONFIG", default=None,
              help="YAML config file (default: $WATCHTOWER_CONFIG, else built-in defaults: "
                   "local Parquet store in ./store, SQLite alerts in ./alerts.sqlite).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="How much the run logs to stderr.")
@click.version_option(package_name="watchtower-zeek", prog_name="watchtower")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, log_level: str) -> None:
    """Watch Tower: Zeek logs to detections, alerts and weekly reports.

    Every command reads one config (--config FILE or $WATCHTOWER_CONFIG,
    overridden by WATCHTOWER_* variables). Run `watchtower COMMAND --help`
    for what each command does.
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if log_level.upper() == "INFO":
        # papermill logs every notebook's paths twice (inspect, then execute); the runner's own
        # "[N] phase ..." lines say the same once. Its warnings and errors still show.
        logging.getLogger("papermill").setLevel(logging.WARNING)
        # paramiko logs each connection, login and SFTP channel (7 lines a sensor); the collector's
        # own lines and table say what happened. Its warnings (a refused channel) still show.
        logging.getLogger("paramiko").setLevel(logging.WARNING)
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


def settings_from(ctx: click.Context):
    """The Settings for this invocation (loaded once, on first use)."""
    from ..config import load

    obj = ctx.ensure_object(dict)
    if "settings" not in obj:
        obj["settings"] = load(obj.get("config_path"))
    return obj["settings"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: turn our own errors into a one-line message and exit code 2, not a traceback."""
    try:
        cli.main(args=argv, prog_name="watchtower", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except WatchtowerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
