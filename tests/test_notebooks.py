"""The phase notebooks: their shape (one typed, commented parameters cell; no logic; no paths), and a
real run of phases 1-7 (then 0) through papermill on the sample data, with the report rendered.

The run is `make demo` itself: ``watchtower demo`` in a fresh folder ingests data/logs (44 real files,
13,898 rows), runs phases 1-7 with the notebooks' default parameters (training on data/labelled) and
renders the HTML and PDF report; every pipeline test reads that one run, so the seven phases run once
(about a minute on two cores).
"""
from __future__ import annotations

import ast
import dataclasses
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill as pm
import pytest

from conftest import ES_URL, require
from test_render import _read_pgm
from watchtower_lib import config, render, runner, store
from watchtower_lib import report as wt_report
from watchtower_lib.zeek import read_log
from watchtower_lib.alert_store import AlertStore
from watchtower_lib.errors import ConfigError, PhaseError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IMPORTS = {"watchtower_lib", "pandas", "plotly.express", "IPython.display"}
SAMPLE = ROOT / "data/logs"


def test_every_phase_has_its_notebook():
    assert [p.stem for p in NOTEBOOKS] == list(runner.PHASES.values())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_typed_commented_and_parsed_by_papermill(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is next(c for c in nb.cells if c.cell_type == "code")
    assigned = [node.target.id for node in ast.parse(tagged[0].source).body if isinstance(node, ast.AnnAssign)]
    assert len(assigned) == len(ast.parse(tagged[0].source).body)  # only annotated assignments
    declared = pm.inspect_notebook(str(path))
    assert list(declared) == assigned  # papermill sees every one (a '=' in a comment would hide it)
    for name, info in declared.items():
        assert info["inferred_type_name"] in ("str", "int", "float", "bool", "list"), name
        assert len(info["help"]) > 10, f"{name}: say what it is in a comment"
    assert {"config_path", "output_dir"} <= set(declared)
    number = int(path.stem[:2])
    assert ({"start", "end"} <= set(declared)) == (number in runner.NEEDS_PERIOD)
    assert nb.metadata.kernelspec.name == "python3"


#: what a code cell may not hold outside the parameters cell: definitions, loops, branches, comprehensions and
#: comparisons. Filters, decisions and tables built in a loop belong in watchtower_lib, where tests reach them.
FORBIDDEN = {
    ast.FunctionDef: "a def", ast.AsyncFunctionDef: "a def", ast.ClassDef: "a class", ast.Lambda: "a lambda",
    ast.For: "a for loop", ast.AsyncFor: "a for loop", ast.While: "a while loop", ast.If: "an if statement",
    ast.IfExp: "a conditional expression", ast.ListComp: "a comprehension", ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension", ast.GeneratorExp: "a generator expression", ast.Compare: "a comparison",
    ast.Try: "a try statement", ast.With: "a with statement", ast.Match: "a match statement",
}
#: builtins that fold or reorder data: the figure or table they make is library work
FOLDING = {"sum", "min", "max", "sorted", "any", "all", "map", "filter", "zip", "enumerate", "range", "next", "iter",
           "reversed"}
FILE_NAME = re.compile(r"\.(log|gz|json|yml|yaml|sqlite|parquet|ipynb|labeled)\b")
GLOB = re.compile(r"\*[./]|[./]\*")  # "*/conn*.labeled", "data/*"; not markdown bold ("**Period**")


def thin_violations(source: str, *, parameters: bool = False) -> list[str]:
    """What makes a code cell more than calls, plots and tables (empty: the cell is thin)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", "?")
        if not parameters and type(node) in FORBIDDEN:
            found.append(f"line {line}: {FORBIDDEN[type(node)]}")
        if not parameters and isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in FOLDING:
            found.append(f"line {line}: {node.func.id}(...)")
        if isinstance(node, ast.Attribute) and node.attr in ("glob", "rglob", "iterdir"):
            found.append(f"line {line}: .{node.attr}() finds files; the library knows where they are")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text.startswith(("/", "~", "./", "../")) or "data/" in text or "labelled/" in text:
                found.append(f"line {line}: hard-coded path {text!r}")
            if FILE_NAME.search(text) or GLOB.search(text):
                found.append(f"line {line}: file name or pattern {text!r}")
        if isinstance(node, ast.Import) and not {a.name for a in node.names} <= IMPORTS:
            found.append(f"line {line}: import {', '.join(a.name for a in node.names)}")
        if isinstance(node, ast.ImportFrom) and node.module not in IMPORTS:
            found.append(f"line {line}: from {node.module} import ...")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for index, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, "commit notebooks with outputs cleared"
        parameters = "parameters" in cell.metadata.get("tags", [])
        problems = thin_violations(cell.source, parameters=parameters)
        assert not problems, f"{path.name}, code cell {index}: {problems}\n{cell.source}"
    assert f'wt.runner.record_phase(output_dir, "{path.stem}"' in code[-1].source.replace("(\n    ", "(")
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


@pytest.mark.parametrize("source, what", [
    ('conn_now = conn[conn["ts"] >= period.start]', "a comparison"),
    ('pd.DataFrame([{"phase": name, "rows": r.get("rows")} for name, r in phases.items()])', "a comprehension"),
    ('paths = sorted(str(p) for p in (settings.data_dir / "labelled").glob("*/conn*.labeled"))', ".glob()"),
    ('paths = labelled_paths or wt.models.training_files(settings.data_dir, "*/conn*.labeled")', "pattern"),
    ('x = wt.notify.notify(i, c, d) if settings.notifications.webhook else None', "a conditional expression"),
    ('wt.runner.record_phase(output_dir, "01_collect", files=sum(s.files for s in collected.sensors))', "sum(...)"),
    ('rows = []\nfor name in names:\n    rows.append(name)', "a for loop"),
    ('if settings.sensors:\n    collected = wt.collect.collect(settings)', "an if statement"),
    ('importance = pd.Series(model[-1].feature_importances_).pipe(lambda s: s.nlargest(20))', "a lambda"),
    ('def top(frame):\n    return frame.head()', "a def"),
    ('wt.store.ingest("conn.log.labeled", settings.store_dir)', "file name"),
    ('wt.store.load("/var/zeek/store", "conn")', "hard-coded path"),
    ('import os', "import os"),
])
def test_the_thinness_check_refuses_logic(source, what):
    """The check above can fail: each of these (most were in the notebooks once) is refused."""
    problems = thin_violations(source)
    assert any(what in p for p in problems), problems
    assert thin_violations('wt.report.phase_table(wt.runner.read_phases(output_dir))') == []
    assert thin_violations('Markdown("**Retraining drift:** " + change.summary())') == []
    assert thin_violations('max_rows: int = 50000  # at most this many; 0: all', parameters=True) == []


# ------------------------------------------------------------------ the library steps the notebooks call
def test_phase_1_helpers_collect_from_a_local_sensor(tmp_path):
    capture = SAMPLE / "stratosphere/002-nmap-port-scanning/conn.log"
    logs = tmp_path / "sensor-logs"
    logs.mkdir()
    shutil.copy(capture, logs / "conn.log")
    nothing = config.load(env={"WATCHTOWER_RAW_DIR": str(tmp_path / "raw")})
    empty = runner.collect_phase(nothing)
    assert empty.sensors == [] and runner.collect_problems(empty) == []
    assert runner.collect_table(empty).empty and runner.collect_table(empty).columns.tolist() == [
        "sensor", "status", "files", "bytes", "seconds", "unchanged", "errors"]
    assert runner.collect_figures(empty) == {"sensors": 0, "files": 0, "bytes": 0, "failed_sensors": []}
    assert runner.sensors_note(nothing).startswith("**No sensors configured")
    cfg = tmp_path / "watchtower.yml"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once we leave
    cfg.write_text(f"raw_dir: raw\nsensors:\n  - {{name: box, kind: local, remote_dir: {logs}}}\n"
                   f"  - {{name: gone, host: 127.0.0.1, port: {closed}, user: zeek, retries: 0, connect_timeout: 2}}\n")
    settings = config.load(cfg, env={})
    assert runner.sensors_note(settings) == f"Sensors: box (local), gone (ssh); raw logs go to `{tmp_path / 'raw'}`."
    collected = runner.collect_phase(settings)
    table = runner.collect_table(collected).set_index("sensor")
    assert table.loc["box", "files"] == 1 and table.loc["box", "bytes"] == capture.stat().st_size
    assert table.loc["gone", "status"] == "failed" and table.loc["gone", "errors"] >= 1
    problems = runner.collect_problems(collected)
    assert problems and all(p.startswith("gone: ") for p in problems)
    assert runner.collect_figures(collected) == {"sensors": 2, "files": 1, "bytes": capture.stat().st_size,
                                                 "failed_sensors": ["gone"]}
    again = runner.collect_phase(settings, "box")  # one sensor; nothing new the second time
    assert runner.collect_figures(again) == {"sensors": 1, "files": 0, "bytes": 0, "failed_sensors": []}
    with pytest.raises(ConfigError, match="no sensor named"):
        runner.collect_phase(nothing, "box")


def test_phase_2_helpers_ingest_per_sensor_and_total(tmp_path):
    scan, honeypot = SAMPLE / "stratosphere/002-nmap-port-scanning", SAMPLE / "stratosphere/006-ssh-honeypot-rpi"
    readme = ROOT / "data/README.md"  # named explicitly but not Zeek: unreadable, skipped
    sources = {"lab": [scan], "pi": [honeypot, readme]}
    reports = store.ingest_sources(sources, tmp_path / "store", errors="skip")
    expected = {name: {} for name in sources}
    for name, folder in (("lab", scan), ("pi", honeypot)):
        for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(".log")):
            log_type = f.name.split(".")[0]
            expected[name][log_type] = expected[name].get(log_type, 0) + len(read_log(f))
    assert {name: r.rows_by_log_type for name, r in reports.items()} == expected
    table = store.ingest_table(reports).set_index("sensor")
    assert table.columns.tolist() == ["files ingested", "already in the store", "rows", "unreadable files", "seconds"]
    assert table.loc["lab", "rows"] == sum(expected["lab"].values()) and table.loc["pi", "unreadable files"] == 1
    total = store.combine_reports(reports.values())
    assert total.files_ingested == reports["lab"].files_ingested + reports["pi"].files_ingested > 2
    stored = store.summary(tmp_path / "store")["rows"].sum()
    assert total.rows == sum(sum(e.values()) for e in expected.values()) == stored
    assert total.rows_by_log_type["conn"] == expected["lab"]["conn"] + expected["pi"]["conn"]
    by_type = total.log_type_table()
    assert by_type["rows"].is_monotonic_decreasing and by_type["rows"].sum() == total.rows
    assert by_type.index[0] == "conn" and by_type.index.name == "log_type"
    errors = total.errors_table()
    assert errors["file"].tolist() == [str(readme)] and "README" in errors.loc[0, "file"]
    assert set(store.load(tmp_path / "store", "ssh")["_sensor"]) == {"pi"}
    twice = store.combine_reports(store.ingest_sources(sources, tmp_path / "store").values())
    assert twice.files_ingested == 0 and twice.files_skipped == total.files_ingested and twice.rows == 0
    assert twice.log_type_table().empty and store.combine_reports([]).rows == 0


# ------------------------------------------------------------------ the real thing
SAMPLE_ROWS = 13898  # rows of data/logs, from the table in data/README.md (tests/test_cli.py checks it)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``watchtower demo`` as an analyst runs it (the entry point, in a subprocess) in a fresh folder.

    Returns the settings it used, its one run record, and what it printed.
    """
    home = tmp_path_factory.mktemp("demo")
    cfg = home / "watchtower.yml"
    cfg.write_text(f"data_dir: {ROOT / 'data'}\n", encoding="utf-8")  # store, models, runs, reports: in home
    entry = "import sys; from watchtower_lib.cli import main; main(sys.argv[1:])"  # = the `watchtower` script
    done = subprocess.run([sys.executable, "-c", entry, "--config", str(cfg), "demo"], cwd=home,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    settings = config.load(cfg, env={})
    (record,) = runner.list_runs(settings.runs_dir)
    return settings, record, done


@pytest.fixture(scope="module")
def pipeline(demo):
    settings, record, _ = demo
    return settings, record


def test_demo_runs_phases_1_to_7_and_prints_the_report(demo):
    settings, record, done = demo
    assert f"ingested 44 file(s) ({SAMPLE_ROWS:,} rows), 0 already in the store" in done.stdout
    assert [p.number for p in record.phases] == list(range(1, 8)) and record.ok
    for number, name in list(runner.PHASES.items())[1:]:
        assert f"[{number}] {name} ...\n" in done.stderr and f"[{number}] {name} done in " in done.stderr
    assert "00_explore" not in done.stderr and "FAILED" not in done.stderr
    assert f"run {record.run_id} ok: {record.run_dir / 'run.json'}" in done.stdout
    assert "period 2022-W39: 2022-09-26T00:00:00+00:00 .. 2022-10-03T00:00:00+00:00" in done.stdout
    printed = [Path(line[len("report: "):]) for line in done.stdout.splitlines() if line.startswith("report: ")]
    where = render.report_dir(settings.reports_dir, "2022-W39")
    assert printed[0] == where / "weekly-report.html" and printed[0].stat().st_size > 3_000_000
    assert "plotly-graph-div" in printed[0].read_text(encoding="utf-8")
    require("CHROMIUM", bool(shutil.which("chromium") or shutil.which("chromium-browser")), "to print the PDF")
    assert printed == [where / "weekly-report.html", where / "weekly-report.pdf"]
    assert printed[1].read_bytes().startswith(b"%PDF")


def test_pipeline_runs_all_seven_phases_on_real_data(pipeline):
    settings, record = pipeline
    assert record.ok and [p.status for p in record.phases] == ["ok"] * 7
    assert record.period["label"] == "2022-W39"  # the week of the newest conn data (nmap scan, 2022-09-29)
    figures = runner.read_phases(record.run_dir)
    assert list(figures) == list(runner.PHASES.values())[1:]
    assert figures["01_collect"]["sensors"] == 0 and figures["01_collect"]["files"] == 0
    parse = figures["02_parse"]  # the demo ingested the sample just before: phase 2 finds it all stored
    files = sorted(p for p in SAMPLE.rglob("*") if p.is_file())
    assert parse["files_ingested"] == 0 and parse["files_skipped"] == len(files) == 44
    assert parse["rows"] == 0 and parse["unreadable_files"] == 0
    assert parse["store_rows"] == sum(len(read_log(f)) for f in files) == SAMPLE_ROWS
    assert figures["03_features"]["connections"] == 4504 and figures["03_features"]["n_features"] > 20
    supervised = figures["04_supervised"]
    assert (settings.models_dir / "supervised" / supervised["model_version"] / "card.json").is_file()
    assert 0 < supervised["threshold"] < 1 and supervised["rows"] > 10000
    unsupervised = figures["05_unsupervised"]
    assert unsupervised["rows"] == 4504 and 0 < unsupervised["threshold"] < 1
    detect = figures["06_detect"]
    assert detect["rows"] == 4504 and detect["alerts"] == sum(detect["alerts_by_kind"].values()) > 0
    assert detect["model_version"] == {"supervised": supervised["model_version"],
                                       "unsupervised": unsupervised["model_version"]}
    stored = AlertStore(settings.alerts_db).alerts(record.period["start"], record.period["end"])
    assert len(stored) == detect["alerts"]
    assert "'not configured'" in _outputs(record.notebook(6))  # no Elasticsearch: detected.es_status()
    assert "no notification channel configured" in _outputs(record.notebook(6))
    report = figures["07_weekly_report"]
    assert report["alerts"] == detect["alerts"] and report["figures"]["connections"] == 4504
    assert report["figures_before"]["connections"] == 0  # nothing in the store the week before
    week = AlertStore(settings.alerts_db).incidents(start=record.period["start"], end=record.period["end"])
    assert report["incidents"] == report["figures"]["incidents"] == len(week) > 0
    this_run = wt_report.phase_table(figures).set_index("phase")
    assert this_run.index.tolist() == list(figures) and (this_run["seconds"] > 0).all()
    assert this_run.loc["06_detect", "alerts"] == detect["alerts"] and this_run.loc["03_features", "rows"] == 4504
    first = wt_report.latest_retraining(settings.models_dir)
    assert first.version == unsupervised["model_version"] and first.previous is None
    assert unsupervised["previous_version"] is None and unsupervised["largest_shift"] is None
    assert f"{first.version} is the first version" in _outputs(record.notebook(7))
    assert all(f["seconds"] > 0 for f in figures.values())
    saved = json.loads((record.run_dir / "run.json").read_text())
    assert saved["status"] == "ok" and saved["parameters"]["source_config"] == str(settings.config_path)


def test_report_renders_from_the_run(pipeline, tmp_path):
    require("CHROMIUM", bool(shutil.which("chromium") or shutil.which("chromium-browser")), "to print the PDF")
    require("POPPLER", shutil.which("pdftotext") is not None and shutil.which("pdftoppm") is not None,
            "to read the PDF")
    settings, record = pipeline
    where = render.report_dir(settings.reports_dir, "2022-W39")  # what the demo rendered (`watchtower run`)
    files = render.ReportFiles(where / "weekly-report.html", where / "weekly-report.pdf")
    html = files.html.read_text(encoding="utf-8")
    assert html.count('class="plotly-graph-div"') >= 7 and html.count("* plotly.js v") == 1
    assert "cdn.plot.ly/plotly" not in html and "wt.report" not in html
    assert "<title>Watch Tower weekly report 2022-W39</title>" in html
    text = subprocess.run(["pdftotext", str(files.pdf), "-"], capture_output=True, text=True, check=True).stdout
    for heading in ("Watch Tower weekly report", "Period 2022-W39", "The week against the previous week",
                    "Alerts over time", "Top alerted hosts", "Known attack families", "Unknown anomalies",
                    "Behaviour changes", "Model health", "This run"):
        assert heading in text, heading
    pages = int(re.search(r"Pages:\s+(\d+)", subprocess.run(["pdfinfo", str(files.pdf)], capture_output=True,
                                                               text=True).stdout)[1])
    assert 3 <= pages <= 12
    _assert_figures_drawn(files.pdf, pages, tmp_path)


#: titles plotly draws inside the report's figures (a section heading may end the page before its figure)
FIGURE_TITLES = ("This period against the previous one", "Alerts over time", "Top alerted hosts",
                 "Known attack families", "Hosts whose behaviour changed most", "Activity by hour of day (UTC)")


def _assert_figures_drawn(pdf: Path, pages: int, folder: Path) -> None:
    """Every page holding a figure is drawn in colour; a page of text and tables has none.

    The figures are the only coloured ink in the report (bars in blues, reds, purple); text is black and
    tables are grey, so the count of saturated pixels tells a drawn figure from an empty frame or a
    figure missing altogether, which leave no colour and no title.
    """
    text = {page: subprocess.run(["pdftotext", "-f", str(page), "-l", str(page), str(pdf), "-"],
                                 capture_output=True, text=True, check=True).stdout for page in range(1, pages + 1)}
    holding = {title: [page for page, words in text.items() if title in words] for title in FIGURE_TITLES}
    assert all(holding.values()), f"figure titles missing from the PDF (figures not drawn): {holding}"
    figure_pages = sorted({page for found in holding.values() for page in found})
    assert len(figure_pages) >= 3
    for page in figure_pages:
        width, height, coloured, dark = _page_pixels(pdf, page, folder)
        assert dark > 0.02 * width * height, f"page {page}: only {dark} non-white pixels"
        assert coloured > 0.01 * width * height, f"page {page}: {coloured} coloured pixels, its figure is not drawn"
    # the control: the page of the run table holds tables and text only, and shows no colour, so the
    # measure above is the figures'
    (tables,) = [page for page, words in text.items() if "This run" in words]
    assert tables not in figure_pages
    width, height, coloured, dark = _page_pixels(pdf, tables, folder)
    assert coloured < 0.001 * width * height < dark, (tables, coloured)


def _page_pixels(pdf: Path, page: int, folder: Path) -> tuple[int, int, int, int]:
    """``(width, height, coloured, dark)`` pixels of one page at 30 dpi: saturated, and darker than light grey."""
    out = folder / f"page{page}"
    out.mkdir(exist_ok=True)
    subprocess.run(["pdftoppm", "-r", "30", "-f", str(page), "-l", str(page), str(pdf), str(out / "p")], check=True)
    subprocess.run(["pdftoppm", "-gray", "-r", "30", "-f", str(page), "-l", str(page), str(pdf), str(out / "g")],
                   check=True)
    (ppm,), (pgm,) = out.glob("p-*.ppm"), out.glob("g-*.pgm")
    width, height, grey = _read_pgm(pgm)  # test_render's reader of pdftoppm's grey pages
    magic, w, h, maxval, rest = ppm.read_bytes().split(maxsplit=4)
    assert (magic, maxval, int(w), int(h)) == (b"P6", b"255", width, height)
    rgb = rest[: width * height * 3]
    coloured = sum(1 for i in range(0, len(rgb), 3) if max(rgb[i:i + 3]) - min(rgb[i:i + 3]) > 60)
    return width, height, coloured, sum(1 for value in grey if value < 200)


def _outputs(notebook: Path) -> str:
    """Every output of an executed notebook, as text (what the analyst sees in it)."""
    return json.dumps([o for c in nbformat.read(notebook, 4).cells for o in c.get("outputs", [])])


def test_phase_2_ingests_the_sample_into_an_empty_store(pipeline, tmp_path):
    settings, _ = pipeline
    fresh = dataclasses.replace(settings, store_dir=tmp_path / "store", runs_dir=tmp_path / "runs")
    record = runner.run_phases(fresh, "2")
    parse = runner.read_phase(record.run_dir, "02_parse")
    files = sorted(p for p in SAMPLE.rglob("*") if p.is_file())
    assert parse["files_ingested"] == len(files) == 44 and parse["unreadable_files"] == 0
    assert parse["rows"] == parse["store_rows"] == sum(len(read_log(f)) for f in files) == SAMPLE_ROWS
    stratosphere_conn = 4504 + 361 + 992 + 18  # nmap, Android RAT, Simda, honeypot (data/README.md)
    stored = store.summary(fresh.store_dir).set_index("log_type")["rows"]
    assert parse["rows_by_log_type"] == stored.to_dict() and parse["rows_by_log_type"]["conn"] > stratosphere_conn
    assert parse["es_ok"] and parse["es_indexed"] == {} and parse["es_rows_pending"] == 0
    shown = _outputs(record.notebook(2))
    assert "files ingested" in shown and f"{stored['conn']}" in shown  # the per-sensor and per-log-type tables


def test_later_runs_reuse_the_store(pipeline):
    settings, first = pipeline
    again = runner.run_phases(settings, "2")
    parse = runner.read_phase(again.run_dir, "02_parse")
    first_parse = runner.read_phase(first.run_dir, "02_parse")
    assert parse["files_ingested"] == 0 and parse["files_skipped"] == 44
    assert parse["store_rows"] == first_parse["store_rows"]
    day = runner.run_phases(settings, "7", start="2022-09-29", end="2022-09-30")
    report = runner.read_phase(day.run_dir, "07_weekly_report")
    assert day.period["label"] == "2022-09-29_2022-09-29" and report["figures"]["connections"] == 4504
    assert report["previous"]["start"] == "2022-09-28T00:00:00+00:00"
    explore = runner.run_phases(settings, "0")
    assert runner.read_phase(explore.run_dir, "00_explore")["alerts"] == \
        runner.read_phase(first.run_dir, "06_detect")["alerts"]
    outputs = [o for c in nbformat.read(explore.notebook(0), 4).cells for o in c.get("outputs", [])]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)


def test_a_failing_real_phase_names_notebook_and_cell(pipeline, tmp_path):
    settings, _ = pipeline
    not_labelled = tmp_path / "conn.log.labeled"
    shutil.copy(SAMPLE / "stratosphere/006-ssh-honeypot-rpi/ssh.log", not_labelled)  # a real log, but no label columns
    with pytest.raises(PhaseError) as info:
        runner.run_phases(settings, "4", parameters={"labelled_paths": [str(not_labelled)]})
    assert info.value.phase == "04_supervised" and info.value.notebook.endswith("04_supervised.ipynb")
    assert "train_supervised" in str(info.value) and info.value.cell_index is not None


def test_phases_run_with_other_parameter_sets(pipeline, tmp_path):
    """Not only the defaults: phase 1 for one named local sensor, phase 2 on given inputs with
    errors=raise and no sample, phase 3 on every connection (max_rows=0)."""
    settings, _ = pipeline
    logs = tmp_path / "sensor"
    logs.mkdir()
    nmap = SAMPLE / "stratosphere/002-nmap-port-scanning/conn.log"
    shutil.copy(nmap, logs / "conn.log")
    sensor = config.SensorConfig(name="this-box", kind="local", remote_dir=str(logs), patterns=("*.log",))
    fresh = dataclasses.replace(settings, store_dir=tmp_path / "store", runs_dir=tmp_path / "runs",
                                raw_dir=tmp_path / "raw", sensors=(sensor,))
    collected = runner.run_phases(fresh, "1", parameters={"sensor": "this-box"})
    assert runner.read_phase(collected.run_dir, "01_collect")["files"] == 1
    assert (tmp_path / "raw/this-box/conn.log").read_bytes() == nmap.read_bytes()
    parsed = runner.run_phases(fresh, "2", parameters={"inputs": [str(nmap)], "sensor": "lab", "errors": "raise",
                                                        "include_sample": False})
    parse = runner.read_phase(parsed.run_dir, "02_parse")
    # inputs replace the sensors' raw folders and the sample: only the nmap log is ingested
    assert parse["rows"] == parse["store_rows"] == len(read_log(nmap)) == 4504
    featured = runner.run_phases(fresh, "3", start="2022-09-29", end="2022-09-30", parameters={"max_rows": 0})
    features = runner.read_phase(featured.run_dir, "03_features")
    assert features["rows"] == features["connections"] == 4504
    assert features["n_features"] == len(features["features"]) > 100


def test_report_reads_from_elasticsearch(pipeline, tmp_path):
    """Phase 7 with source=elasticsearch: conn rows and host figures come from the node (after phase 2
    indexed the store there) and give the same week figures as the Parquet store."""
    require("ES", bool(ES_URL), "set WATCHTOWER_ES_URL to a running node (scripts/es-node start)")
    import uuid

    settings, first = pipeline
    prefix = f"wt-nb-{uuid.uuid4().hex[:8]}"
    with_es = dataclasses.replace(
        settings, runs_dir=tmp_path / "runs", store_dir=tmp_path / "store",
        elasticsearch=dataclasses.replace(settings.elasticsearch, url=ES_URL, index_prefix=prefix))
    shutil.copytree(settings.store_dir, with_es.store_dir)
    parsed = runner.run_phases(with_es, "2")
    assert runner.read_phase(parsed.run_dir, "02_parse")["es_ok"]
    from_es = runner.run_phases(with_es, "7", parameters={"source": "elasticsearch"})
    report = runner.read_phase(from_es.run_dir, "07_weekly_report")
    from_store = runner.read_phase(first.run_dir, "07_weekly_report")
    assert report["source"] == "elasticsearch"
    assert report["figures"] == from_store["figures"] and report["rows"] == from_store["rows"] == 4504
    assert report["hosts"] == from_store["hosts"]
