"""Turn the executed weekly-report notebook into a shareable HTML file and a PDF.

Why this route: the executed notebook already holds every table and interactive figure, so the
HTML is nbconvert's export of it without the code (``--no-input``) through our template in
``templates/watchtower`` (offline, print-friendly), and the PDF is that very HTML printed by headless
Chromium -- what the analyst sees in a browser is what lands on paper, plotly figures included.

Offline: the notebook sets plotly's ``notebook`` renderer (:func:`offline_plotly`), which inlines
plotly.js once in the first figure's output; the template drops the lab template's CDN scripts
(require.js, MathJax, widgets), and :func:`notebook_to_html` removes any remaining remote
``<script src=...>`` (plotly adds a MathJax CDN tag to each figure), so the report opens and prints
with no network.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ._atomic import write_text_atomic
from .errors import IntegrationError, WatchtowerError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "watchtower"
#: CSS pixels of the printable width of an A4 portrait page with 8 mm margins (194 mm at 96 dpi);
#: Chromium lays the page out at this width, so report.py's 720 px figures fit uncut.
PRINT_WIDTH_PX = 733
#: how long (virtual milliseconds) Chromium lets scripts run before printing, so plotly has drawn
VIRTUAL_TIME_BUDGET_MS = 20000
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--no-pdf-header-footer",
    "--run-all-compositor-stages-before-draw",
)
_REMOTE_SCRIPT = re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//[^>]*>\s*</script>", re.IGNORECASE)


@dataclass(frozen=True)
class ReportFiles:
    """Where a rendered report went; ``pdf`` is None when only HTML was asked for."""

    html: Path
    pdf: Path | None


def offline_plotly() -> None:
    """Make plotly figures in this kernel survive nbconvert and work offline.

    plotly's ``notebook`` renderer inlines plotly.js once and gives HTML that nbconvert keeps
    (unlike the default renderer's mimetype output under papermill), but it also adds a cdnjs
    MathJax ``<script src>`` to every figure; ``report.setup_notebook()`` strips that, so this
    delegates to it: one renderer for every notebook.
    """
    from .report import setup_notebook

    setup_notebook()


def template_dir() -> Path:
    """The folder holding nbconvert templates (``templates/`` of the repository)."""
    return REPO_ROOT / "templates"


def notebook_to_html(notebook: str | Path, html_path: str | Path, *, title: str | None = None) -> Path:
    """Export an executed notebook to HTML without code cells, through the Watch Tower template.

    Errors and warnings printed to stderr by the kernel are left out too: they belong in the executed
    notebook, not in a report for readers who never see the code.

    Raises
    ------
    WatchtowerError
        The notebook does not exist or is not a notebook.
    """
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    notebook = Path(notebook)
    html_path = Path(html_path)
    try:
        nb = nbformat.read(notebook, as_version=4)
    except (OSError, ValueError) as exc:
        raise WatchtowerError(f"{notebook}: cannot read the executed notebook ({exc}); "
                              f"run the phase first (`watchtower run --phases 7`)") from None
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs
                            if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    if title:
        nb.metadata["title"] = title
    config = Config()
    config.TemplateExporter.exclude_input = True  # nbconvert --no-input
    config.TemplateExporter.exclude_input_prompt = True
    config.TemplateExporter.exclude_output_prompt = True
    config.TagRemovePreprocessor.enabled = True
    config.TagRemovePreprocessor.remove_cell_tags = {"remove-cell", "parameters", "injected-parameters"}
    config.HTMLExporter.extra_template_basedirs = [str(template_dir())]
    config.HTMLExporter.template_name = TEMPLATE
    exporter = HTMLExporter(config=config)
    body, _ = exporter.from_notebook_node(nb)
    body, removed = _REMOTE_SCRIPT.subn("", body)
    if removed:
        log.info("left out %d remote script tag(s) so the report works offline", removed)
    write_text_atomic(html_path, body)
    log.info("wrote %s (%.1f MB)", html_path, html_path.stat().st_size / 1e6)
    return html_path


def find_chromium() -> str:
    """The Chromium (or Chrome) executable: ``$WATCHTOWER_CHROMIUM``, else the first on PATH.

    Raises
    ------
    IntegrationError
        None found; the message says how to install one.
    """
    explicit = os.environ.get("WATCHTOWER_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    raise IntegrationError("no Chromium to print the PDF with: apt-get install chromium "
                           "(or set WATCHTOWER_CHROMIUM to a Chrome/Chromium executable); "
                           "the HTML report was written and needs no browser")


def html_to_pdf(html_path: str | Path, pdf_path: str | Path, *, chromium: str | None = None,
                timeout: float = 240.0) -> Path:
    """Print an HTML file to PDF with headless Chromium (A4 portrait, figures drawn first).

    Raises
    ------
    IntegrationError
        Chromium is missing, timed out, or wrote no PDF; the message carries its stderr.
    """
    html_path = Path(html_path).resolve()
    pdf_path = Path(pdf_path).resolve()
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_pdf = pdf_path.with_name(pdf_path.name + ".tmp")
    tmp_pdf.unlink(missing_ok=True)
    exe = chromium or find_chromium()
    with tempfile.TemporaryDirectory(prefix="watchtower-chromium-") as profile:
        command = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                   f"--window-size={PRINT_WIDTH_PX},1400",
                   f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
                   f"--print-to-pdf={tmp_pdf}", html_path.as_uri()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "HOME": profile})
        except subprocess.TimeoutExpired:
            raise IntegrationError(f"Chromium did not finish printing {html_path} within {timeout:.0f} s") from None
        except OSError as exc:
            raise IntegrationError(f"cannot start Chromium {exe!r}: {exc}") from None
    if done.returncode != 0 or not tmp_pdf.is_file() or tmp_pdf.stat().st_size == 0:
        tail = "\n".join((done.stderr or "").strip().splitlines()[-8:])
        raise IntegrationError(f"Chromium failed to print {html_path} (exit {done.returncode}):\n{tail}")
    tmp_pdf.replace(pdf_path)
    log.info("wrote %s (%.1f MB)", pdf_path, pdf_path.stat().st_size / 1e6)
    return pdf_path


def render_report(notebook: str | Path, out_dir: str | Path, *, pdf: bool = True,
                  name: str = "weekly-report", title: str | None = None) -> ReportFiles:
    """Render an executed report notebook to ``<out_dir>/<name>.html`` and ``.pdf``.

    Parameters
    ----------
    notebook : the executed ``07_weekly_report.ipynb`` of a run.
    out_dir : usually ``<reports_dir>/<period label>`` (see :func:`report_dir`).
    pdf : also print the PDF (needs Chromium).
    """
    out_dir = Path(out_dir)
    html = notebook_to_html(notebook, out_dir / f"{name}.html", title=title)
    return ReportFiles(html=html, pdf=html_to_pdf(html, out_dir / f"{name}.pdf") if pdf else None)


def report_dir(reports_dir: str | Path, period_label: str) -> Path:
    """``<reports_dir>/<period label>``, e.g. ``reports/2022-W39``."""
    return Path(reports_dir) / period_label
