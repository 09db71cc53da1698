"""Rendering: an executed notebook with plotly figures -> offline HTML (nbconvert) -> PDF (real Chromium).

The notebook plots a real capture (Stratosphere's nmap scan, data/logs) with plotly under the
``notebook`` renderer, as the weekly report does; three sections with one tall figure each, so the
A4 PDF must have exactly three pages, each starting with its heading.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nbformat
import papermill as pm
import pytest
from click.testing import CliRunner
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from conftest import require
from watchtower_lib import config, render, runner
from watchtower_lib.cli import cli, main
from watchtower_lib.errors import IntegrationError

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT / "data/logs/stratosphere/002-nmap-port-scanning/conn.log"
HEADINGS = ["Connections per minute", "Destination ports", "Connection states"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def report_notebook(path: Path) -> Path:
    cells = [
        new_code_cell('output_dir: str = ""  # run folder\nconn_log: str = ""  # a Zeek conn log',
                      metadata={"tags": ["parameters"]}),
        new_markdown_cell("# Render test report\n\nA real capture: Stratosphere's nmap port scan."),
        new_code_cell("import watchtower_lib as wt\nimport plotly.express as px\n"
                      "wt.render.offline_plotly()\nconn = wt.read_log(conn_log)\nlen(conn)"),
        new_markdown_cell(f"## {HEADINGS[0]}"),
        new_code_cell("px.histogram(conn, x='ts', nbins=60, height=600, width=700)"),
        new_markdown_cell(f"## {HEADINGS[1]}"),
        new_code_cell("px.histogram(conn, x='id.resp_p', nbins=100, height=600, width=700, log_y=True)"),
        new_markdown_cell(f"## {HEADINGS[2]}"),
        new_code_cell("px.bar(conn['conn_state'].value_counts().reset_index(), x='conn_state', y='count', "
                      "height=600, width=700)"),
        new_code_cell("conn['conn_state'].value_counts().to_frame()"),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("render")
    source = report_notebook(folder / "source.ipynb")
    out = folder / "executed.ipynb"
    pm.execute_notebook(str(source), str(out), parameters={"conn_log": str(CAPTURE)}, kernel_name="python3",
                        progress_bar=False)
    return out


@pytest.fixture(scope="module")
def rendered(executed) -> render.ReportFiles:
    require("CHROMIUM", CHROMIUM is not None, "to print the PDF")
    return render.render_report(executed, executed.parent / "report", title="Render test")


def test_html_is_offline_with_plotly_inlined_once(executed, tmp_path):
    html_path = render.notebook_to_html(executed, tmp_path / "r.html")
    html = html_path.read_text(encoding="utf-8")
    assert html.count('class="plotly-graph-div"') == 3
    assert html.count("Plotly.newPlot(") == 3
    assert html.count("* plotly.js v") == 1  # the library itself, inlined once
    assert "cdn.plot.ly/plotly" not in html
    assert "<script src=\"http" not in html and "require.min.js" not in html and "cdnjs" not in html
    assert "px.histogram" not in html and "conn_log" not in html  # no code, no parameters cell
    assert all(f">{h}<" in html or f"{h}<a" in html for h in HEADINGS)
    assert "<title>Render test</title>" not in html  # title only when asked
    assert ">4504<" in html  # len(conn) of the real capture is an output, shown


def test_pdf_has_one_page_per_section_and_is_not_blank(rendered, tmp_path):
    require("POPPLER", shutil.which("pdftoppm") is not None, "to read the PDF")
    assert rendered.html.name == "weekly-report.html" and rendered.pdf.name == "weekly-report.pdf"
    info = subprocess.run(["pdfinfo", str(rendered.pdf)], capture_output=True, text=True, check=True).stdout
    assert "Pages:           3" in info and "A4" in info
    for page, heading in enumerate(HEADINGS, start=1):
        text = subprocess.run(["pdftotext", "-f", str(page), "-l", str(page), "-layout", str(rendered.pdf), "-"],
                              capture_output=True, text=True, check=True).stdout
        assert heading in text, (page, text[:300])
    assert "Render test report" in subprocess.run(["pdftotext", "-l", "1", str(rendered.pdf), "-"],
                                                   capture_output=True, text=True).stdout
    for page in (1, 3):
        subprocess.run(["pdftoppm", "-gray", "-r", "30", "-f", str(page), "-l", str(page), str(rendered.pdf),
                        str(tmp_path / "page")], check=True)
        (pgm,) = tmp_path.glob(f"page-{page}.pgm")
        width, height, pixels = _read_pgm(pgm)
        dark = sum(1 for value in pixels if value < 200)
        assert (width, height) == (248, 351)  # A4 portrait at 30 dpi
        assert dark > 0.02 * width * height, f"page {page}: only {dark} non-white pixels"


def _read_pgm(path: Path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    magic, width, height, maxval, rest = data.split(maxsplit=4)
    assert magic == b"P5" and maxval == b"255"
    return int(width), int(height), rest[: int(width) * int(height)]


def test_missing_chromium_is_a_clear_error(executed, tmp_path, monkeypatch):
    html = render.notebook_to_html(executed, tmp_path / "r.html")
    monkeypatch.setenv("WATCHTOWER_CHROMIUM", str(tmp_path / "no-such-chromium"))
    with pytest.raises(IntegrationError, match="cannot start Chromium"):
        render.html_to_pdf(html, tmp_path / "r.pdf")
    assert not (tmp_path / "r.pdf").exists()


def test_report_command_renders_the_newest_weekly_report_run(tmp_path):
    require("CHROMIUM", CHROMIUM is not None, "to print the PDF")
    nbs = tmp_path / "nbs"
    report_notebook(nbs / "07_weekly_report.ipynb")
    cfg = tmp_path / "watchtower.yml"
    cfg.write_text("reports_dir: out\n")
    settings = config.load(cfg, env={})
    record = runner.run_phases(settings, "7", week="2022-W39", notebooks=nbs, parameters={"conn_log": str(CAPTURE)})
    result = CliRunner().invoke(cli, ["--config", str(cfg), "report", "--period", "2022-W39"])
    assert result.exit_code == 0, result.output
    html, pdf = tmp_path / "out/2022-W39/weekly-report.html", tmp_path / "out/2022-W39/weekly-report.pdf"
    assert result.output.split() == [str(html), str(pdf)]
    assert html.stat().st_size > 3_000_000 and pdf.read_bytes().startswith(b"%PDF")
    assert json.loads((record.run_dir / "run.json").read_text())["period"]["label"] == "2022-W39"
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(cfg), "report", "--period", "2031-W02", "--no-pdf"])
    assert exit_info.value.code == 2
