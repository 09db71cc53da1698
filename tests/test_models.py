"""Models on real labelled captures: cross-capture quality, explanations, files, versions, CLI.

Every quality figure here is measured on a capture the model never saw; the
asserted floors sit a margin below what was measured (docs/detection.md).
"""
from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from click.testing import CliRunner
from sklearn.utils.estimator_checks import parametrize_with_checks

from watchtower_lib import _model_eval, _model_store, models, store
from watchtower_lib.cli import cli
from watchtower_lib.errors import ModelError

IOT = "labelled/iot23/CTU-IoT-Malware-Capture-34-1/conn.log.labeled.gz"
NJRAT = "labelled/stratosphere-sdt/001-njrat-ctu-botnet-230-1/labeled-conn.log"
C008 = "labelled/stratosphere-sdt/008-ctu-normal-40-day1/conn.log.labeled"
C011 = "labelled/stratosphere-sdt/011-ctu-normal-43-day1/conn.log.labeled"


@pytest.fixture(scope="module")
def caps(shared_data):
    return models.read_captures([shared_data / p for p in (IOT, NJRAT, C008, C011)])


@pytest.fixture(scope="module")
def names(caps):
    return dict(zip(("iot", "njrat", "c008", "c011"), caps))


@pytest.fixture(scope="module")
def forest(caps, names):
    """Forest trained on IoT-23 34-1 and 008 (with attack families)."""
    data = pd.concat([caps[names["iot"]], caps[names["c008"]]], ignore_index=True)
    return models.build_supervised(0).fit(data, data["label"], forest__detail=data["detail"])


@pytest.fixture(scope="module")
def iforest(caps, names):
    data = pd.concat([caps[names["iot"]], caps[names["c008"]]], ignore_index=True)
    return models.build_unsupervised(0).fit(data)


# --------------------------------------------------------------- quality, by capture
@pytest.mark.slow
def test_forest_on_a_capture_it_never_saw(caps, names):
    """Train on IoT-23 34-1, 001 and 008; evaluate on 011 (measured: PR-AUC 1.0000, recall 1.0000 at 1% FPR)."""
    train = {k: v for k, v in caps.items() if k != names["c011"]}
    report = _model_eval.evaluate(train, {names["c011"]: caps[names["c011"]]})
    sup, uns = report["supervised"]["pooled"], report["unsupervised"]["pooled"]
    assert sup["rows"] == 8722 and sup["malicious"] == 3951
    assert sup["pr_auc"] >= 0.99
    assert sup["recall_at_fpr_0.01"] >= 0.97
    # the threshold chosen by leave-one-capture-out on the training captures only
    assert sup["per_class"]["malicious"]["recall"] >= 0.95 and sup["fpr"] <= 0.01
    # isolation forest on the training captures' benign rows (measured 0.946)
    assert uns["roc_auc"] >= 0.90


@pytest.mark.slow
def test_leave_one_capture_out_table(caps, names):
    """The forest rows of docs/detection.md: each capture scored by a forest trained on the other three.

    Measured (PR-AUC / recall at 1% FPR): 008 1.0000 / 1.0000, 001 0.9993 / 0.9795, 011 1.0000 / 1.0000,
    IoT-23 0.9331 / 0.0316. The IoT-23 fold is the documented failure: its "benign" label covers 1,074
    unanswered connection attempts (many to the C&C address) and its DDoS rows are zero-packet OTH
    flows unlike anything in the other captures.
    """
    metrics, threshold = _model_eval.cross_capture(caps)
    per = metrics["per_capture"]
    for key, pr, rec in (("c008", 0.99, 0.97), ("njrat", 0.99, 0.95), ("c011", 0.99, 0.97)):
        assert per[names[key]]["pr_auc"] >= pr, key
        assert per[names[key]]["recall_at_fpr_0.01"] >= rec, key
    assert per[names["iot"]]["recall_at_fpr_0.01"] < 0.2 and per[names["iot"]]["roc_auc"] < 0.7
    # pooled over all four folds the target is missed because of IoT-23 (measured recall 0.33)
    assert metrics["pooled"]["recall_at_fpr_0.01"] < 0.5
    assert 0 < threshold < 1


@pytest.mark.slow
def test_pooled_over_the_stratosphere_networks_meets_the_target(caps, names):
    """Targets of the issue, pooled over three held-out networks (001, 008, 011; IoT-23 always in
    training). Measured: PR-AUC 0.9993, recall 0.9909 at FPR <= 1%, Isolation Forest ROC-AUC 0.934."""
    ys, ps, an = [], [], []
    for key in ("njrat", "c008", "c011"):
        train = [df for name, df in caps.items() if name != names[key]]
        sup, uns, _ = _model_eval._fit(train, random_state=0, n_jobs=None)
        y, p, a = _model_eval._score(sup, uns, caps[names[key]])
        ys.append(y)
        ps.append(p)
        an.append(a)
    y = np.concatenate(ys)
    pooled = _model_eval.binary_metrics(y, np.concatenate(ps), 0.5)
    assert pooled["rows"] == 14578 and pooled["malicious"] == 8396
    assert pooled["pr_auc"] >= 0.99
    assert pooled["recall_at_fpr_0.01"] >= 0.97
    assert _model_eval.binary_metrics(y, np.concatenate(an), 0.6)["roc_auc"] >= 0.90


def test_evaluation_refuses_a_capture_in_both_sets(caps, names):
    one = {names["c008"]: caps[names["c008"]]}
    with pytest.raises(ModelError, match="never saw"):
        _model_eval.evaluate(one, one)


def test_recall_at_fpr_picks_the_best_point_within_the_budget():
    y = np.array([0] * 100 + [1] * 10, dtype=bool)
    score = np.r_[np.linspace(0, 0.5, 100), np.linspace(0.3, 1.0, 10)]
    recall, thr = _model_eval.recall_at_fpr(y, score, 0.01)
    pred = score >= thr
    assert (pred & ~y).sum() <= 1
    assert recall == pytest.approx((pred & y).sum() / 10)


# --------------------------------------------------------------- the supervised pipeline
_BINARY_BY_DESIGN = "LabelForest learns Watch Tower's two classes (benign/malicious or 0/1) only"
_LABEL_FOREST_EXPECTED_FAILURES = {
    name: _BINARY_BY_DESIGN for name in (
        "check_classifiers_classes", "check_classifiers_one_label", "check_classifier_multioutput",
        "check_classifiers_train", "check_classifiers_regression_target", "check_fit2d_1sample",
        "check_classifiers_multilabel_representation_invariance",
        "check_classifiers_multilabel_output_format_predict",
        "check_classifiers_multilabel_output_format_predict_proba",
        "check_classifiers_multilabel_output_format_decision_function", "check_supervised_y_no_nan",
        "check_estimators_empty_data_messages")
} | {
    "check_sample_weight_equivalence_on_dense_data": "bootstrap + balanced_subsample weights, as RandomForest",
    "check_sample_weight_equivalence_on_sparse_data": "bootstrap + balanced_subsample weights, as RandomForest",
    "check_estimator_sparse_array": "rows are selected before the forest; features are dense frames",
    "check_estimator_sparse_matrix": "rows are selected before the forest; features are dense frames",
}


@parametrize_with_checks([models.LabelForest(n_estimators=5, random_state=0)],
                         expected_failed_checks=lambda est: _LABEL_FOREST_EXPECTED_FAILURES)
def test_label_forest_sklearn_checks(estimator, check):
    check(estimator)


def _root_totals(model) -> set[float]:
    """Each tree's root weight, rounded: with class_weight="balanced_subsample" every class of a
    bootstrap sample weighs n / (2 * its count), so the root totals n, the rows the forest was fit on."""
    return {round(float(tree.tree_.weighted_n_node_samples[0]), 6) for tree in model[-1].estimators_}


def test_unknown_rows_are_context_not_targets(caps, names, forest):
    """From the fitted forest, not from training_rows: IoT-23 34-1 (23,145 labelled rows) and 008
    (5,663 rows, 60 of them Background, PROVENANCE.md) give 28,808 rows to fit, and the forest's
    trees were grown on 28,748, the labelled ones. The same data with the Background rows labelled
    benign (targets now) gives trees grown on 28,808: the check tells the two apart."""
    assert list(forest[-1].classes_) == [0, 1]
    iot, c008 = caps[names["iot"]], caps[names["c008"]]
    assert (len(iot), len(c008), int((c008["label"] == "unknown").sum())) == (23145, 5663, 60)
    assert _root_totals(forest) == {23145.0 + 5603}  # every tree's bootstrap sample, by weight
    data = pd.concat([iot, c008], ignore_index=True)
    as_targets = data.assign(label=data["label"].replace({"unknown": "benign"}))
    targeted = models.build_supervised(0, n_estimators=3).fit(as_targets, as_targets["label"])
    assert _root_totals(targeted) == {23145.0 + 5663}
    assert forest.named_steps["baseline"].n_features_in_ == 103
    proba = models.malicious_proba(forest, caps[names["c011"]])
    assert proba.shape == (9048,) and ((proba >= 0) & (proba <= 1)).all()


def test_forest_needs_both_classes(caps, names):
    only_bad = caps[names["iot"]]
    only_bad = only_bad[only_bad["label"] == "malicious"]
    with pytest.raises(ModelError, match="both benign and malicious"):
        models.build_supervised(0).fit(only_bad, only_bad["label"])


def test_attack_families(caps, names, forest):
    assert set(forest[-1].family_classes_) == {"C&C", "DDoS", "PartOfAHorizontalPortScan",
                                                "External-Attack-to-Device"}
    c011 = caps[names["c011"]]
    flagged = np.flatnonzero(models.malicious_proba(forest, c011) >= 0.5)
    fam = models.predict_family(forest, c011, rows=flagged)
    truth = c011["detail"].iloc[flagged].fillna("").to_numpy()
    attacks = truth == "External-Attack-to-Device"
    assert attacks.sum() > 3000
    assert (fam[attacks] == "External-Attack-to-Device").mean() > 0.9


def test_family_needs_detail_labels(caps, names):
    data = caps[names["c008"]]
    plain = models.build_supervised(0, n_estimators=5).fit(data, data["label"])
    with pytest.raises(ModelError, match="families"):
        models.predict_family(plain, data)


def test_explanations_name_the_features_that_pushed_the_score(caps, names, forest):
    c011 = caps[names["c011"]]
    rows = np.flatnonzero(models.malicious_proba(forest, c011) >= 0.9)[:40]
    explained = models.explain(forest, c011, top=3, rows=rows)
    assert len(explained) == len(rows)
    medians = models.baseline_medians(forest)
    feats = forest[:-1].transform(c011)
    names = models.feature_names(forest)
    assert feats.shape == (len(c011), 103) and feats.flags.c_contiguous and feats.dtype == np.float32
    for pos, items in zip(rows, explained):
        assert len(items) == 3
        assert [d["effect"] for d in items] == sorted((d["effect"] for d in items), reverse=True)
        for d in items:
            assert set(d) == {"feature", "value", "baseline_median", "effect"}
            assert d["baseline_median"] == pytest.approx(medians[d["feature"]])
            assert d["value"] == pytest.approx(float(feats[pos, names.index(d["feature"])]))
    # each push is real: scikit-learn's own predict_proba of the row with that one feature put at its
    # training median is lower than the row's by `effect` (recomputed here, not taken from explain)
    perturbed, expected = [], []
    for pos, items in zip(rows, explained):
        for d in items:
            row = feats[pos].copy()
            row[names.index(d["feature"])] = medians[d["feature"]]
            perturbed.append(row)
            expected.append(d["effect"])
    as_is = forest[-1].predict_proba(feats[rows])[:, 1]
    at_median = forest[-1].predict_proba(np.stack(perturbed))[:, 1]
    recomputed = np.repeat(as_is, 3) - at_median
    np.testing.assert_allclose(recomputed, expected, rtol=0, atol=1e-9)
    assert (as_is >= 0.9).all() and explained[0][0]["effect"] > 0.01  # the strongest push moves the score


def test_anomaly_score_is_minus_score_samples_in_0_1(caps, names, iforest):
    c011 = caps[names["c011"]]
    score = models.anomaly_score(iforest, c011)
    np.testing.assert_allclose(score, -iforest.score_samples(c011))
    assert ((score > 0) & (score <= 1)).all()
    explained = models.explain(iforest, c011, top=2, rows=[int(np.argmax(score))])
    assert explained[0][0]["effect"] > 0


def test_blockwise_scores_equal_scikit_learns_across_blocks_and_threads(caps, forest, iforest, monkeypatch):
    """Our cache-blocked scoring gives scikit-learn's own predict_proba / score_samples, on 38,848 real
    rows cut into blocks of 5,000 (the last one partial), on one thread and on several."""
    from watchtower_lib import _forest_scoring

    every = pd.concat(caps.values(), ignore_index=True)
    monkeypatch.setattr(_forest_scoring, "BLOCK_ROWS", 5_000)
    expected_p = forest.predict_proba(every)[:, 1]
    expected_a = -iforest.score_samples(every)
    for n_jobs in (1, 2, None):
        forest[-1].set_params(n_jobs=n_jobs)
        iforest[-1].set_params(n_jobs=n_jobs)
        np.testing.assert_allclose(models.malicious_proba(forest, every), expected_p, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(models.anomaly_score(iforest, every), expected_a, rtol=1e-12)
    feats = models.features_of(forest, every)
    assert _forest_scoring.blockwise(forest[-1], feats.astype(np.float64), None) is None  # not float32: sklearn
    assert 0.1 < expected_p.mean() < 0.9 and 0.3 < expected_a.mean() < 0.7  # real, varied scores


def test_score_both_equals_the_two_pipelines(caps, names, forest, iforest):
    c011 = caps[names["c011"]]
    proba, anomaly = models.score_both(forest, iforest, c011)
    np.testing.assert_allclose(proba, models.malicious_proba(forest, c011))
    np.testing.assert_allclose(anomaly, models.anomaly_score(iforest, c011))


# --------------------------------------------------------------- files, cards, versions
def test_save_load_round_trip_and_refusals(tmp_path, caps, names, forest):
    c011 = caps[names["c011"]]
    path = models.save(forest, tmp_path / "v1", {"version": "v1", "threshold": 0.8})
    card = json.loads((tmp_path / "v1" / "card.json").read_text())
    assert card["features"] == models.feature_names(forest) and len(card["features"]) == 103
    assert card["versions"]["scikit-learn"] and card["model_sha256"]
    assert set(sio.get_untrusted_types(file=path)) <= models.ALLOWED_TYPES
    loaded = models.load(tmp_path / "v1")
    np.testing.assert_allclose(models.malicious_proba(loaded, c011), models.malicious_proba(forest, c011))

    for field, value, message in [("versions", {"scikit-learn": "0.0.1"}, "scikit-learn 0.0.1"),
                                  ("features", ["duration_log"], "other features")]:
        bad = tmp_path / f"bad-{field}"
        shutil.copytree(tmp_path / "v1", bad)
        edited = dict(card, **{field: value})
        (bad / "card.json").write_text(json.dumps(edited))
        with pytest.raises(ModelError, match=message):
            models.load(bad)

    tampered = tmp_path / "tampered"
    shutil.copytree(tmp_path / "v1", tampered)
    with open(tampered / "model.skops", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError):
        models.load(tampered)


def test_a_file_with_foreign_types_is_refused(tmp_path):
    from fractions import Fraction

    sio.dump({"payload": Fraction(1, 3)}, tmp_path / "model.skops")
    from watchtower_lib._model_store import library_versions

    (tmp_path / "card.json").write_text(json.dumps({"versions": library_versions()}))
    with pytest.raises(ModelError, match="allow-list.*fractions.Fraction"):
        models.load(tmp_path)


def test_missing_model_or_card(tmp_path):
    with pytest.raises(ModelError, match="no model file"):
        models.load(tmp_path)
    assert models.latest(tmp_path, "supervised") is None


def test_a_truncated_card_skips_that_version_with_a_warning(tmp_path, forest):
    """A crash of the old card write left half a card.json: the other versions still list and load."""
    root = tmp_path / "models" / "supervised"
    models.save(forest, root / "20260101T000000Z", {"version": "20260101T000000Z", "threshold": 0.7})
    for name in ("20260102T000000Z", "20260103T000000Z"):
        shutil.copytree(root / "20260101T000000Z", root / name)
    damaged = root / "20260103T000000Z"  # the newest
    text = (damaged / "card.json").read_text()
    (damaged / "card.json").write_text(text[: len(text) // 2])
    with pytest.warns(_model_store.ModelStoreWarning) as caught:
        found = models.versions(tmp_path / "models", "supervised")
    assert [v.version for v in found] == ["20260101T000000Z", "20260102T000000Z"]
    (message,) = [str(w.message) for w in caught]
    assert f"skipped model version {damaged}:" in message and "not valid JSON" in message
    assert f"rm -r '{damaged}'" in message and "watchtower train" in message
    with pytest.warns(_model_store.ModelStoreWarning):
        newest = models.latest(tmp_path / "models", "supervised")
    assert newest == root / "20260102T000000Z"
    assert models.load(newest)[-1].n_features_in_ == 103


_KILLED_SAVE = """
import os, signal, sys
from pathlib import Path
from watchtower_lib import models
where, source, target = sys.argv[1:4]
model, card = models.load(source), models.read_card(source)
if where == "card":  # half the card's text reaches the disk, then the power goes
    real_write = Path.write_text
    def dying_write(self, data, *args, **kwargs):
        if self.name.startswith(("card.json", ".card.json")):
            real_write(self, data[: len(data) // 2], *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(self, data, *args, **kwargs)
    Path.write_text = dying_write
else:  # everything written, killed at the rename that publishes the version
    real_replace = os.replace
    def dying_replace(src, dst, *args, **kwargs):
        if Path(dst).name == Path(target).name:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = dying_replace
models.save(model, target, dict(card, version=Path(target).name))
"""


@pytest.mark.parametrize("where", ["card", "rename"])
def test_a_save_killed_midway_leaves_no_version(tmp_path, forest, where):
    """SIGKILL while writing the card or just before the version folder is renamed into place:
    the version does not exist at all, the earlier one still serves, and saving again works."""
    import signal
    import subprocess
    import sys
    import warnings

    root = tmp_path / "models" / "supervised"
    first = root / "20260101T000000Z"
    models.save(forest, first, {"version": first.name, "threshold": 0.7})
    second = root / "20260102T000000Z"
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, where, str(first), str(second)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not second.exists()
    (left,) = [p for p in root.iterdir() if p.name.startswith(".")]  # the unfinished build, hidden
    assert left.name.startswith(f".{second.name}.tmp-") and (left / "model.skops").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: the unfinished version is not a version
        assert [v.path for v in models.versions(tmp_path / "models", "supervised")] == [first]
        assert models.latest(tmp_path / "models", "supervised") == first
    models.save(forest, second, {"version": second.name, "threshold": 0.6})
    found = models.versions(tmp_path / "models", "supervised")
    assert [(v.version, v.threshold) for v in found] == [(first.name, 0.7), (second.name, 0.6)]
    assert sorted(p.name for p in second.iterdir()) == ["card.json", "model.skops"]
    assert models.load(second)[-1].n_features_in_ == 103


@pytest.mark.slow
def test_train_supervised_versions_and_card(tmp_path, shared_data):
    paths = [shared_data / IOT, shared_data / C008]
    v = models.train_supervised(paths, models_dir=tmp_path)
    assert models.latest(tmp_path, "supervised") == v.path
    card = v.card
    assert card["training"]["rows"] == 23145 + 5603
    assert card["training"]["class_counts"] == {"malicious": 21222 + 4201, "benign": 1923 + 1402, "unknown": 60}
    assert [f["sha256"] for f in card["training"]["files"]] == [models.sha256_file(p) for p in paths]
    assert card["metrics"]["protocol"] == "leave-one-capture-out"
    assert set(card["metrics"]["per_capture"]) == {"CTU-IoT-Malware-Capture-34-1", "008-ctu-normal-40-day1"}
    assert 0 < v.threshold <= 1
    assert models.load(v.path)[-1].family_classes_.size == 4


def _alerts_db(path, uids):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE alerts (id TEXT PRIMARY KEY, uid TEXT, kind TEXT)")
    con.executemany("INSERT INTO alerts VALUES (?, ?, 'known')", [(f"a{i}", u) for i, u in enumerate(uids)])
    con.commit()
    con.close()


@pytest.mark.slow
def test_retrain_unsupervised_leaves_out_alerted_traffic_and_keeps_k(tmp_path, shared_data):
    st = tmp_path / "store"
    store.ingest([shared_data / C008, shared_data / C011], st)
    conn = store.load(st, "conn", "2022-06-12", "2022-06-14")
    alerted = conn["uid"].drop_duplicates().iloc[:250].tolist()
    db = tmp_path / "alerts.sqlite"
    _alerts_db(db, alerted)
    first = models.retrain_unsupervised(st, "2022-06-14", 2, models_dir=tmp_path / "m", alerts_db=db,
                                        target_alert_rate=0.01, keep=2)
    tr = first.card["training"]
    assert tr["rows_total"] == len(conn)
    assert tr["excluded_alerted"] == conn["uid"].isin(alerted).sum() >= 250
    assert tr["rows"] == len(conn) - tr["excluded_alerted"]
    assert first.card["metrics"]["training_alert_rate"] == pytest.approx(0.01, abs=0.002)
    # a day later, no alerts file: everything is trained on, the old version is compared
    second = models.retrain_unsupervised(st, "2022-06-14T12:00", 1, models_dir=tmp_path / "m", keep=2,
                                         target_alert_rate=0.05)
    third = models.retrain_unsupervised(st, "2022-06-14", 2, models_dir=tmp_path / "m", keep=2)
    kept = models.versions(tmp_path / "m", "unsupervised")
    assert [v.version for v in kept] == [second.version, third.version]
    change = models.compare_versions(first, second)
    assert change.threshold == (first.threshold, second.threshold)
    assert change.training_rows == (tr["rows"], second.card["training"]["rows"])
    assert list(change.drift.columns) == ["feature", "median_old", "median_new", "iqr_old", "shift"]
    assert len(change.drift) == 103 and change.drift["shift"].is_monotonic_decreasing
    assert "threshold" in change.summary()
    model = models.load(third.path)
    assert models.anomaly_score(model, conn).shape == (len(conn),)


def test_retrain_on_an_empty_window_fails_clearly(tmp_path, shared_data):
    st = tmp_path / "store"
    store.ingest([shared_data / C008], st)
    with pytest.raises(ModelError, match="unalerted conn rows"):
        models.retrain_unsupervised(st, "2001-01-01", 7, models_dir=tmp_path / "m")


def test_alerts_db_is_read_defensively(tmp_path):
    from watchtower_lib.models import _alerted_uids

    assert _alerted_uids(tmp_path / "absent.sqlite") == set()
    odd = tmp_path / "odd.sqlite"
    con = sqlite3.connect(odd)
    con.execute("CREATE TABLE alerts (id TEXT)")
    con.commit()
    con.close()
    assert _alerted_uids(odd) == set()
    _alerts_db(tmp_path / "ok.sqlite", ["C1", "C2", None])
    assert _alerted_uids(tmp_path / "ok.sqlite") == {"C1", "C2"}


# --------------------------------------------------------------- CLI
def test_cli_train_needs_a_mode():
    result = CliRunner().invoke(cli, ["train"])
    assert result.exit_code == 2 and "--supervised" in result.output


def test_cli_train_refuses_a_bad_end_date_clearly():
    result = CliRunner().invoke(cli, ["train", "--unsupervised", "--end", "notadate"])
    assert result.exit_code == 2  # a usage error, not a traceback
    assert "'notadate' is not a date or time" in result.output and "--end" in result.output


@pytest.mark.slow
def test_cli_train_supervised_writes_a_version(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("WATCHTOWER_MODELS_DIR", str(tmp_path / "models"))
    result = CliRunner().invoke(cli, ["train", "--supervised", str(shared_data / C008), str(shared_data / C011)])
    assert result.exit_code == 0, result.output
    assert "supervised model" in result.output and "leave-one-capture-out: PR-AUC" in result.output
    assert models.latest(tmp_path / "models", "supervised") is not None


@pytest.mark.slow
def test_cli_evaluate_reports_every_figure(tmp_path, shared_data):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["evaluate", "--train", f"{shared_data / IOT},{shared_data / C008}",
                                      "--test", str(shared_data / C011), "--json", str(out)])
    assert result.exit_code == 0, result.output
    for text in ("precision", "recall", "F1", "PR-AUC", "ROC-AUC", "recall at FPR<=1%", "confusion: TN"):
        assert text in result.output
    report = json.loads(out.read_text())
    # measured: PR-AUC 1.0000, recall at 1% FPR 1.0000, Isolation Forest ROC-AUC 0.897
    assert report["supervised"]["pooled"]["pr_auc"] >= 0.99
    assert report["supervised"]["pooled"]["recall_at_fpr_0.01"] >= 0.97
    assert report["unsupervised"]["pooled"]["roc_auc"] >= 0.85


def test_cli_evaluate_refuses_overlap(shared_data, capsys):
    """Through the entry point an analyst runs: one line saying which capture is in both, exit 2."""
    from watchtower_lib.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--log-level", "ERROR", "evaluate", "--train", str(shared_data / C008), "--test", str(shared_data / C008)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == ("error: captures both in --train and --test: ['008-ctu-normal-40-day1']; "
                   "evaluation must use captures the model never saw\n")


@pytest.mark.slow
def test_cli_train_unsupervised_learns_the_window_of_the_store(tmp_path, shared_data, monkeypatch):
    st = tmp_path / "store"
    store.ingest([shared_data / C008, shared_data / C011], st)
    rows = len(store.load(st, "conn", "2022-06-12", "2022-06-14"))
    for name, value in {"STORE_DIR": st, "MODELS_DIR": tmp_path / "models",
                        "ALERTS_DB": tmp_path / "alerts.sqlite"}.items():
        monkeypatch.setenv(f"WATCHTOWER_{name}", str(value))
    result = CliRunner().invoke(cli, ["train", "--unsupervised", "--end", "2022-06-14", "--window-days", "2"])
    assert result.exit_code == 0, result.output
    card = models.read_card(models.latest(tmp_path / "models", "unsupervised"))
    assert card["training"]["rows"] == card["training"]["rows_total"] == rows > 10_000
    assert card["training"]["excluded_alerted"] == 0
    assert card["version"] in result.output
    empty = CliRunner().invoke(cli, ["train", "--unsupervised", "--end", "2001-01-01"])
    assert empty.exit_code != 0 and "ingest more data or widen window_days" in str(empty.exception or empty.output)
