"""Figures and tables for the weekly report: returned, never shown.

Why returned: the notebook decides what to display, a test can inspect a figure's
data, and the same function serves the HTML report and the explorer. Every figure
has a fixed size that fits an A4 page in portrait (``WIDTH`` x ``HEIGHT`` pixels at
96 dpi, inside the print margins), the ``plotly_white`` template so it prints on
white paper, and says "no data for this period" instead of failing on empty input.

Offline: call :func:`setup_notebook` once at the top of a notebook. It selects a
variant of plotly's ``notebook`` renderer, which inlines plotly.js once into the
notebook (no CDN) and emits HTML that nbconvert keeps (papermill output under
plotly's default renderer is dropped by nbconvert).

Inputs are plain DataFrames: alerts as ``alerts.detect`` returns them (``id, ts,
sensor, src_ip, dst_ip, dst_port, proto, service, kind, family, score, severity,
explanation, uid, model_version``), conn logs as ``store.load(..., "conn")``.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from ._report_tables import (
    METRICS,
    SEVERITY_ORDER,
    RetrainingChange,
    attack_families,
    baseline_drift,
    behaviour_changes,
    constant_columns,
    hosts_changed,
    latest_cards,
    latest_retraining,
    model_health,
    period_figures,
    phase_table,
    retraining_change,
    top_alerted_hosts,
    unknown_anomalies,
    week_over_week,
)

if TYPE_CHECKING:
    from .config import Settings
    from .periods import Period

log = logging.getLogger(__name__)

__all__ = [
    "WIDTH", "HEIGHT", "NO_DATA", "setup_notebook", "frame_html", "empty_figure",
    "period_figures", "week_over_week", "week_over_week_figure", "alerts_over_time",
    "top_alerted_hosts", "top_hosts_figure", "attack_families", "families_figure",
    "unknown_anomalies", "behaviour_changes", "behaviour_figure", "hour_profile_figure",
    "drift_figure", "model_health", "PeriodData", "period_data", "phase_table", "latest_cards",
    "RetrainingChange", "retraining_change", "latest_retraining", "hosts_changed", "constant_columns",
    "correlation_figure", "baseline_drift",
]

WIDTH = 720  # px: A4 portrait (794 px at 96 dpi) minus ~10 mm margins each side
HEIGHT = 340  # px: three figures fit on one A4 page with their headings
NO_DATA = "no data for this period"
SEVERITY_COLOURS = {"critical": "#7f0000", "high": "#d7301f", "medium": "#fc8d59", "low": "#fdcc8a"}
KIND_COLOURS = {"known": "#d7301f", "unknown": "#4575b4"}
PSI_MODERATE, PSI_SHIFTED = 0.1, 0.25


OFFLINE_RENDERER = "notebook_offline"
_REMOTE_SCRIPT = re.compile(r'<script[^>]*\ssrc="https?://[^"]*"[^>]*>\s*</script>')


def setup_notebook(renderer: str = OFFLINE_RENDERER) -> None:
    """Make plotly figures survive papermill + nbconvert, offline.

    Sets ``plotly.io.renderers.default``. The default, ``notebook_offline``, is plotly's
    ``notebook`` renderer (plotly.js inlined once, before the first figure; HTML output
    that nbconvert keeps) minus the MathJax ``<script src>`` from cdnjs that plotly adds to
    every figure, so the report loads nothing from the network. Call it explicitly at the
    top of a report notebook; importing this module changes nothing.

    Also lifts pandas' 50-character cell limit: a report cut an alert's explanation and a
    host's reasons to "..." at the very point an analyst reads them; and shows DataFrames
    as :func:`frame_html` does (times to the second, 4 significant digits, "–" for missing).
    """
    import pandas as pd
    import plotly.io as pio

    pd.set_option("display.max_colwidth", None)
    _show_frames_for_reading()

    if renderer == OFFLINE_RENDERER and OFFLINE_RENDERER not in pio.renderers:
        pio.renderers[OFFLINE_RENDERER] = _offline_renderer()
    pio.renderers.default = renderer
    log.debug("plotly renderer set to %s", renderer)


NA_TEXT = "\u2013"  # an en dash where a value is missing: NaN/<NA>/NaT read like errors in a report


def frame_html(df: Any) -> str | None:
    """A DataFrame as HTML for reading: the values are untouched, only how they are written.

    Times (UTC in every report) to the second without "+00:00", intervals in seconds,
    floats to 4 significant digits (whole numbers without ".0", 1,000 and above without
    decimals), and
    ``NA_TEXT`` for any missing value. Frames longer than ``display.max_rows`` return None,
    so pandas' own truncated view is used for them.
    """
    import pandas as pd

    if len(df) > (pd.get_option("display.max_rows") or len(df)):
        return None
    shown = pd.DataFrame(index=df.index)
    for name, column in df.items():
        shown[name] = _column_text(column)
    return shown.to_html(na_rep=NA_TEXT, escape=True, notebook=True, border=0)


def _column_text(column: Any) -> Any:
    """Times and floats as text, other columns as they are; every gap (NaN, <NA>, NaT) as ``NA_TEXT``."""
    if column.dtype.kind == "M":
        text = column.dt.strftime("%Y-%m-%d %H:%M:%S")
    elif column.dtype.kind == "m":
        text = column.dt.total_seconds().map(_seconds_text, na_action="ignore")
    elif column.dtype.kind == "f":
        text = column.map(_number_text, na_action="ignore")
    elif column.isna().any():
        text = column
    else:
        return column
    return text.astype(object).where(column.notna(), NA_TEXT)


def _seconds_text(seconds: float) -> str:
    """A Zeek interval: "0.01217 s" below a minute, else "1 days 02:03:04" to the second."""
    import pandas as pd

    if abs(seconds) < 60:
        return f"{seconds:.4g} s"
    return str(pd.Timedelta(seconds=round(seconds))).removeprefix("0 days ")


def _number_text(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if value == int(value) or abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.4g}"


def _show_frames_for_reading() -> None:
    """Register :func:`frame_html` as the HTML of DataFrames in the running IPython kernel."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with ipykernel
        return
    shell = get_ipython()
    if shell is None:  # a plain Python process: nothing displays HTML
        return
    import pandas as pd

    shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, frame_html)


def _offline_renderer() -> Any:
    from plotly.io.base_renderers import NotebookRenderer

    class OfflineNotebookRenderer(NotebookRenderer):
        """plotly's notebook renderer without remote scripts in the figure HTML."""

        def to_mimebundle(self, fig_dict: Any) -> dict[str, Any]:
            bundle = super().to_mimebundle(fig_dict)
            if "text/html" in bundle:
                bundle["text/html"] = _REMOTE_SCRIPT.sub("", bundle["text/html"])
            return bundle

    return OfflineNotebookRenderer()


def _layout(fig: Any, title: str, *, height: int = HEIGHT, **extra: Any) -> Any:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 14}},
        template="plotly_white", width=WIDTH, height=height, autosize=False,
        margin={"l": 60, "r": 20, "t": 50, "b": 50}, font={"size": 11},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
        **extra,
    )
    return fig


@dataclass
class PeriodData:
    """What the weekly report shows for a period and the one of the same length before it."""

    period: Period
    previous: Period
    conn: pd.DataFrame  # conn rows of both periods: the behaviour comparison needs them together
    conn_now: pd.DataFrame
    conn_before: pd.DataFrame
    alerts: pd.DataFrame
    alerts_before: pd.DataFrame
    incidents: pd.DataFrame  # incidents overlapping the period (one spanning both weeks is in both)
    incidents_before: pd.DataFrame
    figures: dict[str, float]  # period_figures of the period
    figures_before: dict[str, float]


def period_data(settings: Settings, period: Period, *, source: str = "store") -> PeriodData:
    """Load a period and the previous one: conn rows (store or Elasticsearch), alerts, incidents, figures.

    One read of conn covers both periods and is split at ``period.start``, so the two weeks come
    from the same source at the same moment. Incidents are those overlapping each period
    (``AlertStore.incidents(start=, end=)``).
    """
    from . import es
    from .alert_store import AlertStore

    previous = period.previous()
    conn = es.load_rows(settings, "conn", previous.start, period.end, source=source)
    now = conn["ts"] >= period.start if len(conn) else pd.Series(False, index=conn.index)
    db = AlertStore(settings.alerts_db)
    data = PeriodData(
        period=period, previous=previous, conn=conn, conn_now=conn[now], conn_before=conn[~now],
        alerts=db.alerts(period.start, period.end), alerts_before=db.alerts(previous.start, previous.end),
        incidents=db.incidents(start=period.start, end=period.end),
        incidents_before=db.incidents(start=previous.start, end=previous.end), figures={}, figures_before={})
    nets = settings.internal_networks
    data.figures = period_figures(data.conn_now, data.alerts, data.incidents, internal_networks=nets)
    data.figures_before = period_figures(data.conn_before, data.alerts_before, data.incidents_before,
                                         internal_networks=nets)
    return data


def empty_figure(title: str, message: str = NO_DATA) -> Any:
    """A figure of the report's size that says ``message`` (default "no data for this period")."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 16, "color": "#666"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title)


def _empty(df: pd.DataFrame | None) -> bool:
    return df is None or len(df) == 0


def week_over_week_figure(current: Mapping[str, float], previous: Mapping[str, float] | None,
                          title: str = "This period against the previous one") -> Any:
    """One small bar pair per metric (previous grey, this period coloured), labelled with the change."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    table = week_over_week(current, previous)
    if not any(table["this_period"]) and table["previous_period"].fillna(0).eq(0).all():
        return empty_figure(title)
    fig = make_subplots(rows=1, cols=len(METRICS), subplot_titles=[_change_label(r) for r in
                                                                     table.itertuples()])
    for i, row in enumerate(table.itertuples(), start=1):
        before = 0.0 if pd.isna(row.previous_period) else float(row.previous_period)
        fig.add_trace(go.Bar(x=["previous", "this"], y=[before, row.this_period],
                             marker_color=["#bdbdbd", "#2171b5"], showlegend=False,
                             text=[_short(before), _short(row.this_period)], textposition="outside",
                             cliponaxis=False, name=row.metric), row=1, col=i)
    fig.update_annotations(font_size=11)
    fig.update_yaxes(showticklabels=False, rangemode="tozero")
    _layout(fig, title, height=280)
    fig.update_layout(margin={"t": 100})  # room for the title above the per-metric subplot titles
    return fig


def _change_label(row: Any) -> str:
    if pd.isna(row.change_pct):
        return f"{row.metric}<br>(no baseline)"
    return f"{row.metric}<br>{row.change_pct:+.0f}%"


def _utc(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _short(value: float) -> str:
    for size, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def alerts_over_time(alerts: pd.DataFrame, *, freq: str = "D", by: str = "severity",
                     start: Any = None, end: Any = None, title: str = "Alerts over time") -> Any:
    """Stacked bars of alert counts per ``freq`` bin (``"D"``, ``"h"``, ...), split by ``by``.

    ``by`` is ``severity`` (worst on top) or ``kind``; ``start``/``end`` fix the x-range to
    the report period, so an empty day shows as a gap rather than vanishing.
    """
    import plotly.graph_objects as go

    if _empty(alerts):
        return empty_figure(title)
    ts = pd.to_datetime(alerts["ts"], utc=True)
    bins = ts.dt.floor(freq)
    counts = pd.crosstab(bins, alerts[by].astype(str))
    if start is not None and end is not None:
        index = pd.date_range(_utc(start).floor(freq), _utc(end), freq=freq, inclusive="left")
        counts = counts.reindex(index.union(counts.index), fill_value=0)
    order = SEVERITY_ORDER[::-1] if by == "severity" else sorted(counts.columns)
    colours = SEVERITY_COLOURS if by == "severity" else KIND_COLOURS
    fig = go.Figure()
    for name in [o for o in order if o in counts.columns] + [c for c in counts.columns if c not in order]:
        fig.add_trace(go.Bar(x=counts.index, y=counts[name], name=name, marker_color=colours.get(name)))
    fig.update_layout(barmode="stack", xaxis_title="time (UTC)", yaxis_title="alerts")
    return _layout(fig, title)


def top_hosts_figure(alerts: pd.DataFrame, n: int = 10, title: str = "Top alerted hosts") -> Any:
    """Horizontal bars: alerts per source host, known and unknown stacked, most alerted on top."""
    import plotly.graph_objects as go

    table = top_alerted_hosts(alerts, n)
    if table.empty:
        return empty_figure(title)
    table = table.iloc[::-1]
    fig = go.Figure()
    for kind in ("known", "unknown"):
        fig.add_trace(go.Bar(y=table["host"], x=table[kind], name=kind, orientation="h",
                             marker_color=KIND_COLOURS[kind]))
    fig.update_layout(barmode="stack", xaxis_title="alerts")
    return _layout(fig, title, height=max(HEIGHT, 40 + 26 * len(table)))


def families_figure(alerts: pd.DataFrame, title: str = "Known attack families") -> Any:
    """Alerts per known attack family (the supervised model's verdicts)."""
    import plotly.graph_objects as go

    table = attack_families(alerts)
    if table.empty:
        return empty_figure(title)
    table = table.iloc[::-1]
    fig = go.Figure(go.Bar(y=table["family"], x=table["alerts"], orientation="h", marker_color="#d7301f",
                           text=[f"{s} source{'s' if s != 1 else ''}" for s in table["sources"]],
                           textposition="auto"))
    fig.update_layout(xaxis_title="alerts")
    return _layout(fig, title, height=max(HEIGHT, 40 + 26 * len(table)))


def behaviour_figure(comparison: Any, n: int = 10, title: str = "Hosts whose behaviour changed most") -> Any:
    """Bars of the change score of the top ``n`` hosts; hovering shows the reasons."""
    import plotly.graph_objects as go

    table = behaviour_changes(comparison, n)
    if table.empty:
        return empty_figure(title)
    table = table.iloc[::-1]
    fig = go.Figure(go.Bar(y=table["host"], x=table["change_score"], orientation="h", marker_color="#6a51a3",
                           hovertext=table["reasons"], hoverinfo="text+x"))
    fig.update_layout(xaxis_title="change score (higher = more change)")
    return _layout(fig, title, height=max(HEIGHT, 40 + 26 * len(table)))


def hour_profile_figure(comparison: Any, host: str | None = None, title: str | None = None) -> Any:
    """The hour-of-day activity of ``host`` (default: the host that changed most) in period A and B."""
    import plotly.graph_objects as go

    if host is None:
        top = comparison.ranked(1)["host"] if comparison is not None else []
        host = str(top[0]) if len(top) else ""
    title = title or f"Activity by hour of day (UTC): {host}"
    if comparison is None:
        return empty_figure(title)
    hourly = comparison.hourly[comparison.hourly["host"] == host]
    if hourly.empty:
        return empty_figure(title)
    fig = go.Figure()
    for period, colour, name in (("a", "#bdbdbd", "previous"), ("b", "#2171b5", "this")):
        sel = hourly[hourly["period"] == period].set_index("hour")["connections"].reindex(range(24), fill_value=0)
        fig.add_trace(go.Bar(x=list(range(24)), y=sel.to_numpy(), name=name, marker_color=colour))
    fig.update_layout(barmode="group", xaxis_title="hour (UTC)", yaxis_title="connections",
                      xaxis={"dtick": 2})
    return _layout(fig, title)


def drift_figure(drift: pd.DataFrame | None, title: str = "Feature drift against the previous period") -> Any:
    """PSI per feature with the usual 0.1 (moderate) and 0.25 (shifted) lines.

    ``drift`` has ``feature`` and ``psi`` columns (``BehaviourComparison.drift``, or the same
    computed against a model's training data).
    """
    import plotly.graph_objects as go

    if drift is None or drift.empty or drift["psi"].dropna().empty:
        return empty_figure(title)
    data = drift.dropna(subset=["psi"])
    colours = ["#d7301f" if v >= PSI_SHIFTED else "#fc8d59" if v >= PSI_MODERATE else "#74c476"
               for v in data["psi"]]
    fig = go.Figure(go.Bar(x=data["feature"], y=data["psi"], marker_color=colours,
                           text=[f"{v:.2f}" for v in data["psi"]], textposition="outside", cliponaxis=False))
    for level, label in ((PSI_MODERATE, "moderate"), (PSI_SHIFTED, "shifted")):
        fig.add_hline(y=level, line_dash="dot", line_color="#666", annotation_text=label,
                      annotation_position="top right")
    fig.update_layout(yaxis_title="PSI", xaxis_title="feature")
    return _layout(fig, title)


def correlation_figure(features: pd.DataFrame, title: str = "Correlation of the non-constant features") -> Any:
    """Heatmap of the pairwise correlation of the features that vary (constant ones have none)."""
    import plotly.express as px

    varying = features.drop(columns=constant_columns(features)).select_dtypes("number")
    if varying.shape[1] == 0 or len(varying) < 2:
        return empty_figure(title)
    return px.imshow(varying.corr().round(2), color_continuous_scale="RdBu_r", zmin=-1, zmax=1,
                     width=WIDTH, height=640, title=title)
