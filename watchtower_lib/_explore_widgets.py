"""The ipywidgets face of the explorer (``watchtower_lib.explore.AnomalyExplorer``).

Only wiring: every number shown comes from the plain functions in ``explore``,
so what the analyst sees is what the tests check.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .explore import (
    ANY,
    LOG_TYPES,
    LogSource,
    alert_label,
    filter_alerts,
    host_timeline,
    host_timeline_figure,
    records_for_uid,
    table_html,
)

log = logging.getLogger(__name__)

MAX_TIME_STEPS = 500  # more steps than this and the time slider becomes unusable: coarser bins


class AnomalyExplorer:
    """Filter alerts by time, host, score, kind and family; pick one to see its records and its host.

    Parameters
    ----------
    alerts : alerts as ``alerts.detect`` or the alert store return them.
    logs : ``{"conn": df, "dns": df, "http": df, "ssl": df}`` or the Parquet store folder
        (read lazily, only the day around the picked alert).
    log_types : the logs searched for the alert's ``uid``.
    max_rows : rows shown in the table and the pick list (the filter count shows all).
    timeline_hours : the host timeline covers this many hours either side of the alert.
    timeline_freq : the timeline's bin (``"h"``, ``"15min"``, ...).

    Attributes
    ----------
    widget : the ipywidgets ``VBox``; displaying the explorer displays it.
    time_range, host, min_score, kind, family : the filter widgets.
    table : HTML widget with the filtered alerts; picker : ``Select`` of them by id.
    records : HTML widget with the Zeek records of the picked alert; timeline : ``Output``.
    selected : the picked alert's id; selected_records : its records per log type;
    timeline_data : its host timeline (DataFrame); figure : the timeline figure.
    """

    def __init__(self, alerts: pd.DataFrame, logs: Mapping[str, pd.DataFrame] | str | Path | LogSource, *,
                 log_types: Sequence[str] = LOG_TYPES, max_rows: int = 200, timeline_hours: float = 12,
                 timeline_freq: str = "h") -> None:
        import ipywidgets as w

        self.alerts = alerts.reset_index(drop=True).assign(ts=pd.to_datetime(alerts["ts"], utc=True))
        self.source = logs if isinstance(logs, LogSource) else LogSource(logs)
        self.log_types = tuple(log_types)
        self.max_rows = max_rows
        self.timeline_span = pd.Timedelta(hours=timeline_hours)
        self.timeline_freq = timeline_freq
        self.selected: str | None = None
        self.selected_records: dict[str, pd.DataFrame] = {}
        self.timeline_data: pd.DataFrame | None = None
        self.figure: Any = None

        steps = self._time_steps()
        self.time_range = w.SelectionRangeSlider(options=steps, index=(0, len(steps) - 1), description="Time",
                                                 continuous_update=False, layout=w.Layout(width="98%"))
        hosts = pd.concat([self.alerts["src_ip"], self.alerts["dst_ip"]]).dropna().astype(str).unique()
        self.host = w.Combobox(options=sorted(hosts), placeholder="any host", description="Host",
                               ensure_option=False, continuous_update=False)
        top = float(pd.to_numeric(self.alerts["score"], errors="coerce").max()) if len(self.alerts) else 1.0
        self.min_score = w.FloatSlider(value=0.0, min=0.0, max=max(1.0, top), step=0.01, description="Min score",
                                       continuous_update=False)
        self.kind = w.Dropdown(options=[ANY, "known", "unknown"], value=ANY, description="Kind")
        families = sorted(self.alerts["family"].dropna().astype(str).unique()) if len(self.alerts) else []
        self.family = w.Dropdown(options=[ANY, *families], value=ANY, description="Family")
        self.count = w.HTML()
        self.table = w.HTML()
        self.picker = w.Select(options=[], rows=8, description="Alert", layout=w.Layout(width="98%"))
        self.records = w.HTML("<p>pick an alert to see its Zeek records</p>")
        self.timeline = w.Output()
        for control in (self.time_range, self.host, self.min_score, self.kind, self.family):
            control.observe(self._on_filter, names="value")
        self.picker.observe(self._on_pick, names="value")
        self.widget = w.VBox([
            w.HBox([self.kind, self.family, self.min_score]), w.HBox([self.host]), self.time_range,
            self.count, self.table, self.picker, w.HTML("<h4>Zeek records</h4>"), self.records,
            w.HTML("<h4>Host timeline</h4>"), self.timeline,
        ])
        self.refresh()

    # -- filtering -----------------------------------------------------------------------------

    def _time_steps(self) -> list[tuple[str, pd.Timestamp]]:
        if self.alerts.empty:
            now = pd.Timestamp.now(tz="UTC").floor("h")
            return [(t.strftime("%Y-%m-%d %H:%M"), t) for t in (now, now + pd.Timedelta(hours=1))]
        first, last = self.alerts["ts"].min(), self.alerts["ts"].max()
        for freq in ("h", "6h", "D", "7D"):
            edges = pd.date_range(first.floor(freq), last.floor(freq) + pd.tseries.frequencies.to_offset(freq), freq=freq)
            if len(edges) <= MAX_TIME_STEPS:
                break
        fmt = "%Y-%m-%d %H:%M" if freq != "D" and freq != "7D" else "%Y-%m-%d"
        return [(t.strftime(fmt), t) for t in edges]

    def filters(self) -> dict[str, Any]:
        """The current widget values as :func:`explore.filter_alerts` keyword arguments."""
        start, end = self.time_range.value
        return {"start": start, "end": end, "host": self.host.value.strip() or None,
                "min_score": self.min_score.value or None, "kind": self.kind.value, "family": self.family.value}

    def filtered(self) -> pd.DataFrame:
        """The alerts the widgets currently select, highest score first."""
        return filter_alerts(self.alerts, **self.filters())

    def refresh(self) -> pd.DataFrame:
        """Re-apply the filters to the table, the count and the pick list; return the filtered alerts."""
        rows = self.filtered()
        self.count.value = f"<b>{len(rows)}</b> of {len(self.alerts)} alerts"
        self.table.value = table_html(rows, max_rows=self.max_rows, css_class="wt-alert-table")
        shown = rows.head(self.max_rows)
        options = [(alert_label(r), str(r["id"])) for r in shown.to_dict("records")]
        keep = self.picker.value if self.picker.value in {v for _, v in options} else None
        self.picker.options = options
        self.picker.value = keep
        return rows

    def _on_filter(self, change: dict[str, Any]) -> None:
        self.refresh()

    # -- drill-down ----------------------------------------------------------------------------

    def _on_pick(self, change: dict[str, Any]) -> None:
        if change.get("new") and change["new"] != self.selected:  # not our own echo from select()
            self.select(change["new"])

    def select(self, alert_id: str) -> dict[str, pd.DataFrame]:
        """Show the Zeek records of alert ``alert_id`` and the timeline of its source host.

        Returns the records per log type (also kept in ``selected_records``).

        Raises
        ------
        KeyError
            No alert has this id.
        """
        match = self.alerts[self.alerts["id"].astype(str) == str(alert_id)]
        if match.empty:
            raise KeyError(f"no alert with id {alert_id!r} in this explorer")
        alert = match.iloc[0]
        self.selected = str(alert_id)
        self.selected_records = records_for_uid(self.source, str(alert["uid"]), self.log_types, around=alert["ts"])
        parts = [f"<p>uid <code>{alert['uid']}</code>: {alert.get('explanation', '')}</p>"]
        for log_type, frame in self.selected_records.items():
            parts.append(f"<h5>{log_type} ({len(frame)})</h5>")
            parts.append(table_html(frame, columns=list(frame.columns), css_class=f"wt-records wt-{log_type}"))
        self.records.value = "".join(parts)
        host = str(alert["src_ip"])
        start, end = alert["ts"] - self.timeline_span, alert["ts"] + self.timeline_span
        conn = self.source.frame("conn", start=start, end=end)
        if conn is None:
            conn = pd.DataFrame(columns=["ts", "id.orig_h", "id.resp_h", "orig_bytes", "resp_bytes"])
        self.timeline_data = host_timeline(conn, host, start=start, end=end, freq=self.timeline_freq,
                                           alerts=self.alerts)
        self.figure = host_timeline_figure(self.timeline_data, host, marker=alert["ts"])
        self.timeline.outputs = (_plotly_output(self.figure),)
        if self.picker.value != self.selected and self.selected in {v for _, v in self.picker.options}:
            self.picker.value = self.selected
        return self.selected_records

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _plotly_output(fig: Any) -> dict[str, Any]:
    """The figure as an output of the ``Output`` widget: plotly's own mimetype (drawn by the
    jupyterlab-plotly extension), built directly so no renderer runs outside a notebook."""
    from plotly.io.base_renderers import PlotlyRenderer

    data = PlotlyRenderer().to_mimebundle(fig.to_dict())
    data["text/plain"] = f"<timeline figure: {fig.layout.title.text}>"
    return {"output_type": "display_data", "data": data, "metadata": {}}
