"""``watchtower evaluate``: train on some labelled captures, measure on others it never saw."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from .._atomic import write_text_atomic

log = logging.getLogger(__name__)


def _paths(values: tuple[str, ...]) -> list[Path]:
    out = [Path(p) for v in values for p in v.split(",") if p]
    missing = [str(p) for p in out if not p.is_file()]
    if missing:
        raise click.BadParameter(f"no such file: {', '.join(missing)}")
    return out


def _lines(title: str, m: dict[str, Any]) -> list[str]:
    c = m["confusion"]
    out = [f"{title}: {m['rows']:,} rows ({m['malicious']:,} malicious, {m['benign']:,} benign), "
           f"threshold {m['threshold']:.4f}",
           f"  PR-AUC {m['pr_auc']:.4f}  ROC-AUC {m['roc_auc']:.4f}  recall at FPR<=1% "
           f"{m['recall_at_fpr_0.01']:.4f}  FPR at threshold {m['fpr']:.4f}"]
    for cls, v in m["per_class"].items():
        out.append(f"  {cls:<9} precision {v['precision']:.4f}  recall {v['recall']:.4f}  F1 {v['f1']:.4f}  "
                   f"support {v['support']:,}")
    out.append(f"  confusion: TN {c['tn']:,}  FP {c['fp']:,}  FN {c['fn']:,}  TP {c['tp']:,}")
    return out


@click.command("evaluate")
@click.option("--train", "train_paths", multiple=True, required=True, metavar="PATHS",
              help="Labelled conn logs to train on (repeat the option or separate with commas).")
@click.option("--test", "test_paths", multiple=True, required=True, metavar="PATHS",
              help="Labelled conn logs to evaluate on; must not be among --train.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of both forests.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the full report (per capture and pooled) as JSON to this file.")
def evaluate(train_paths: tuple[str, ...], test_paths: tuple[str, ...], seed: int, json_out: Path | None) -> None:
    """Measure both models on captures they never saw (split by capture, never by rows).

    Trains the Random Forest on the --train captures and the Isolation Forest
    on their benign rows, then scores every --test capture. Prints, pooled over
    the test captures and per capture: precision, recall and F1 per class,
    PR-AUC, ROC-AUC, the confusion matrix and the recall at a false-positive
    rate of at most 1%. The alert threshold is chosen on the training captures
    only (leave-one-capture-out when there are two or more), never on --test.
    Nothing is saved under models/. Exit code 2 on any error.
    """
    from .. import models
    from .._model_eval import evaluate as run

    train = models.read_captures(_paths(train_paths))
    test = models.read_captures(_paths(test_paths))
    report = run(train, test, random_state=seed)
    click.echo(f"trained on {', '.join(report['train'])}; tested on {', '.join(report['test'])}")
    for kind, label in (("supervised", "Random Forest"), ("unsupervised", "Isolation Forest (benign baseline)")):
        click.echo("\n".join(_lines(f"{label}, pooled", report[kind]["pooled"])))
        if len(report[kind]["per_capture"]) > 1:
            for name, m in report[kind]["per_capture"].items():
                click.echo("\n".join(_lines(f"  {label}, {name}", m)))
    if json_out is not None:
        write_text_atomic(json_out, json.dumps(report, indent=2, default=float))
        click.echo(f"report -> {json_out}")
