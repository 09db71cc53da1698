"""``watchtower train``: train the supervised forest on labelled captures, or retrain the anomaly model."""
from __future__ import annotations

import logging
from pathlib import Path

import click

from . import settings_from

log = logging.getLogger(__name__)


@click.command("train")
@click.option("--supervised", "mode", flag_value="supervised",
              help="Train the Random Forest (known attacks) on the labelled conn logs given as PATHS "
                   "(default: every data_dir/labelled/*/conn*.labeled, as phase 4).")
@click.option("--unsupervised", "mode", flag_value="unsupervised",
              help="Retrain the Isolation Forest (anomalies) on the last window of the store.")
@click.option("--end", metavar="DATE", default=None,
              help="--unsupervised: end of the training window (exclusive, e.g. 2026-01-12). Default: now.")
@click.option("--window-days", type=click.IntRange(min=1), default=None,
              help="--unsupervised: days of traffic before --end to learn from. Default: from the config "
                   "(detection.window_days).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same data + seed = same model).")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def train(ctx: click.Context, mode: str | None, end: str | None, window_days: int | None, seed: int,
          paths: tuple[Path, ...]) -> None:
    """Train a detection model and save it as a new version under models/.

    \b
    watchtower train --supervised [data/labelled/*/conn.log.labeled]
        learns known attacks from labelled captures (IoT-23 / Stratosphere
        labels; without PATHS, every data_dir/labelled/*/conn*.labeled);
        with two or more captures its alert threshold and the figures on
        its card come from leaving each capture out in turn.
    watchtower train --unsupervised [--end 2026-01-12]
        relearns "normal" from the last week of the store, leaving out
        connections that already raised alerts, and sets the anomaly
        threshold so that about detection.target_alert_rate of traffic alerts.

    Each run writes models/<kind>/<UTC time>/model.skops + card.json and keeps
    the newest detection.keep_models versions. Exit code 2 on any error.
    """
    from .. import models

    settings = settings_from(ctx)
    det = settings.detection
    if mode is None:
        raise click.UsageError("say what to train: --supervised PATHS... or --unsupervised")
    if mode == "supervised":
        files = models.training_files(settings.data_dir, paths)
        trained = models.train_supervised(files, models_dir=settings.models_dir, random_state=seed,
                                          keep=det.keep_models, progress=None)
    else:
        if paths:
            raise click.UsageError("--unsupervised learns from the store; it takes no PATHS")
        import pandas as pd

        try:
            stamp = pd.Timestamp(end) if end else pd.Timestamp.now(tz="UTC")
        except ValueError:
            raise click.BadParameter(f"{end!r} is not a date or time; give e.g. 2026-01-12 or "
                                     f"2026-01-12T06:00Z", param_hint="--end") from None
        trained = models.retrain_unsupervised(
            settings.store_dir, stamp, window_days or det.window_days, models_dir=settings.models_dir,
            alerts_db=settings.alerts_db, target_alert_rate=det.target_alert_rate, keep=det.keep_models,
            random_state=seed)
    tr = trained.card.get("training", {})
    click.echo(f"{trained.kind} model {trained.version} -> {trained.path}")
    click.echo(f"  trained on {tr.get('rows', 0):,} rows; threshold {trained.threshold:.4f}")
    pooled = trained.card.get("metrics", {}).get("pooled")
    if pooled:
        click.echo(f"  leave-one-capture-out: PR-AUC {pooled['pr_auc']:.3f}, ROC-AUC {pooled['roc_auc']:.3f}, "
                   f"recall at 1% FPR {pooled['recall_at_fpr_0.01']:.3f}")
