"""The anomaly explorer: filter alerts, pick one, see its Zeek records and its host's timeline.

Why: an alert is a claim about one connection; the analyst checks it against
what Zeek saw -- the conn record, the DNS query before it, the HTTP request or
TLS handshake on it (all sharing the connection's ``uid``) -- and against what
the host did around that time. The logic lives in plain functions
(:func:`filter_alerts`, :func:`records_for_uid`, :func:`host_timeline`) that
tests and scripts call directly; :class:`AnomalyExplorer` only wires ipywidgets
to them. Each explorer keeps its own state; nothing is remembered between
explorers or sessions.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

LOG_TYPES = ("conn", "dns", "http", "ssl")
ANY = "(any)"
TABLE_COLUMNS = ["ts", "src_ip", "dst_ip", "dst_port", "service", "kind", "family", "score", "severity",
                 "explanation"]


def filter_alerts(
    alerts: pd.DataFrame,
    *,
    start: Any = None,
    end: Any = None,
    host: str | None = None,
    min_score: float | None = None,
    kind: str | None = None,
    family: str | None = None,
) -> pd.DataFrame:
    """The alerts matching every given filter, highest score first.

    Parameters
    ----------
    alerts : alerts as ``alerts.detect`` or ``AlertStore`` return them.
    start, end : ``start <= ts < end`` (naive means UTC); None leaves that side open.
    host : alerts where this address is the source or the destination.
    min_score : alerts with ``score >= min_score``.
    kind : ``"known"`` or ``"unknown"``; None or ``"(any)"`` for both.
    family : attack family (known alerts); None or ``"(any)"`` for all.
    """
    if alerts is None or alerts.empty:
        return pd.DataFrame(columns=list(alerts.columns) if alerts is not None else TABLE_COLUMNS)
    keep = pd.Series(True, index=alerts.index)
    ts = pd.to_datetime(alerts["ts"], utc=True)
    if start is not None:
        keep &= ts >= _utc(start)
    if end is not None:
        keep &= ts < _utc(end)
    if host:
        src = (alerts["src_ip"].astype("string") == host).fillna(False)
        dst = (alerts["dst_ip"].astype("string") == host).fillna(False)
        keep &= src | dst
    if min_score is not None:
        keep &= (pd.to_numeric(alerts["score"], errors="coerce") >= float(min_score)).fillna(False)
    if kind not in (None, "", ANY):
        keep &= (alerts["kind"].astype("string") == kind).fillna(False)
    if family not in (None, "", ANY):
        keep &= (alerts["family"].astype("string") == family).fillna(False)
    out = alerts[keep.to_numpy()]
    return out.sort_values(["score", "ts"], ascending=[False, True], kind="stable").reset_index(drop=True)


def records_for_uid(logs: Mapping[str, pd.DataFrame] | LogSource, uid: str,
                    log_types: Sequence[str] = LOG_TYPES, *, around: Any = None) -> dict[str, pd.DataFrame]:
    """Every record with this connection ``uid``, per log type (empty frames where there are none).

    ``logs`` maps log type to DataFrame, or is a :class:`LogSource` over a store; ``around``
    (a timestamp) lets a store-backed source read only the days near the alert.
    """
    source = logs if isinstance(logs, LogSource) else LogSource(logs)
    out: dict[str, pd.DataFrame] = {}
    for log_type in log_types:
        frame = source.frame(log_type, around=around)
        if frame is None or "uid" not in frame.columns:
            out[log_type] = pd.DataFrame()
            continue
        out[log_type] = frame[(frame["uid"].astype("string") == uid).fillna(False).to_numpy()].reset_index(drop=True)
    return out


def host_timeline(conn: pd.DataFrame, host: str, *, start: Any = None, end: Any = None, freq: str = "h",
                  alerts: pd.DataFrame | None = None) -> pd.DataFrame:
    """What ``host`` did per ``freq`` bin: connections and bytes out and in, peers, alerts.

    Returns a DataFrame indexed by bin start (UTC) with ``connections_out``,
    ``connections_in``, ``bytes_out``, ``bytes_in``, ``peers`` and ``alerts`` (alerts whose
    source or destination is the host). Bins with nothing stay in as zeros when
    ``start``/``end`` are given.
    """
    cols = ["connections_out", "connections_in", "bytes_out", "bytes_in", "peers", "alerts"]
    ts = pd.to_datetime(conn["ts"], utc=True) if len(conn) else pd.Series([], dtype="datetime64[ns, UTC]")
    keep = pd.Series(True, index=conn.index)
    if start is not None:
        keep &= ts >= _utc(start)
    if end is not None:
        keep &= ts < _utc(end)
    orig = (conn["id.orig_h"].astype("string") == host).fillna(False) if len(conn) else keep
    resp = (conn["id.resp_h"].astype("string") == host).fillna(False) if len(conn) else keep
    sel = conn[(keep & (orig | resp)).to_numpy()]
    out_mask = orig[sel.index].to_numpy()
    bins = ts[sel.index].dt.floor(freq)
    sent = pd.to_numeric(sel["orig_bytes"], errors="coerce").fillna(0).astype(float) if len(sel) else pd.Series(dtype=float)
    recv = pd.to_numeric(sel["resp_bytes"], errors="coerce").fillna(0).astype(float) if len(sel) else pd.Series(dtype=float)
    frame = pd.DataFrame({
        "bin": bins, "out": out_mask, "bytes_out": sent.where(out_mask, recv),
        "bytes_in": recv.where(out_mask, sent),
        "peer": sel["id.resp_h"].astype("string").where(out_mask, sel["id.orig_h"].astype("string")),
    })
    grouped = frame.groupby("bin")
    table = pd.DataFrame({
        "connections_out": grouped["out"].sum().astype(int),
        "connections_in": grouped["out"].agg(lambda s: int((~s.astype(bool)).sum())),
        "bytes_out": grouped["bytes_out"].sum(), "bytes_in": grouped["bytes_in"].sum(),
        "peers": grouped["peer"].nunique(),
    })
    if alerts is not None and len(alerts):
        mine = _between(alerts, start, end)
        mine = mine[((mine["src_ip"].astype("string") == host) |
                     (mine["dst_ip"].astype("string") == host)).fillna(False).to_numpy()]
        table = table.join(pd.to_datetime(mine["ts"], utc=True).dt.floor(freq).value_counts().rename("alerts"),
                           how="outer")
    if start is not None and end is not None:
        full = pd.date_range(_utc(start).floor(freq), _utc(end), freq=freq, inclusive="left")
        table = table.reindex(full.union(table.index))
    table = table.reindex(columns=cols).fillna(0)
    for col in ("connections_out", "connections_in", "peers", "alerts"):
        table[col] = table[col].astype(int)
    table.index.name = "bin"
    return table


def host_timeline_figure(timeline: pd.DataFrame, host: str, *, marker: Any = None) -> Any:
    """Connections out/in per bin (bars) and alerts (points) for ``host``; ``marker`` draws a line."""
    import plotly.graph_objects as go

    from . import report

    title = f"Timeline of {host}"
    if timeline is None or timeline.empty:
        return report.empty_figure(title)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=timeline.index, y=timeline["connections_out"], name="connections out",
                         marker_color="#2171b5"))
    fig.add_trace(go.Bar(x=timeline.index, y=timeline["connections_in"], name="connections in",
                         marker_color="#9ecae1"))
    hits = timeline[timeline["alerts"] > 0]
    fig.add_trace(go.Scatter(x=hits.index, y=hits["alerts"], name="alerts", mode="markers",
                             marker={"color": "#d7301f", "size": 9, "symbol": "x"}, yaxis="y2"))
    fig.update_layout(barmode="stack", yaxis_title="connections",
                      yaxis2={"title": "alerts", "overlaying": "y", "side": "right", "rangemode": "tozero"})
    if marker is not None:
        fig.add_vline(x=_utc(marker).floor("us").to_pydatetime(), line_dash="dot", line_color="#d7301f")
    return report._layout(fig, title)


class LogSource:
    """Zeek logs by type, from DataFrames in memory or from the Parquet store (read lazily, cached here).

    Parameters
    ----------
    logs : ``{"conn": df, "dns": df, ...}`` or a store folder.
    window : how far around a timestamp a store-backed source reads (before, after).
    """

    def __init__(self, logs: Mapping[str, pd.DataFrame] | str | Path,
                 window: tuple[pd.Timedelta, pd.Timedelta] = (pd.Timedelta(hours=1), pd.Timedelta(days=1))):
        self.logs = logs
        self.window = window
        self._cache: dict[tuple[str, Any, Any], pd.DataFrame | None] = {}
        self._types: list[str] | None = None

    @property
    def in_memory(self) -> bool:
        return isinstance(self.logs, Mapping)

    def frame(self, log_type: str, *, start: Any = None, end: Any = None, around: Any = None) -> pd.DataFrame | None:
        """One log type, ``start <= ts < end`` (or the window ``around`` a time); None if absent."""
        if around is not None and start is None and end is None:
            start, end = _utc(around) - self.window[0], _utc(around) + self.window[1]
        if self.in_memory:
            frame = self.logs.get(log_type)  # type: ignore[union-attr]
            if frame is None or (start is None and end is None) or "ts" not in frame.columns:
                return frame
            return _between(frame, start, end)
        key = (log_type, start, end)
        if key not in self._cache:
            self._cache[key] = self._load(log_type, start, end)
        return self._cache[key]

    def _load(self, log_type: str, start: Any, end: Any) -> pd.DataFrame | None:
        from . import store

        if self._types is None:
            self._types = store.log_types(self.logs)  # type: ignore[arg-type]
        if log_type not in self._types:
            log.info("no %s log in store %s", log_type, self.logs)
            return None
        return store.load(self.logs, log_type, start=start, end=end)  # type: ignore[arg-type]


def _between(frame: pd.DataFrame, start: Any, end: Any) -> pd.DataFrame:
    ts = pd.to_datetime(frame["ts"], utc=True)
    keep = pd.Series(True, index=frame.index)
    if start is not None:
        keep &= ts >= _utc(start)
    if end is not None:
        keep &= ts < _utc(end)
    return frame[keep.fillna(False).to_numpy()]


def _utc(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def table_html(frame: pd.DataFrame, columns: Sequence[str] = TABLE_COLUMNS, *, max_rows: int = 200,
               css_class: str = "wt-table") -> str:
    """A small escaped HTML table of ``frame`` (the columns present, first ``max_rows`` rows)."""
    if frame is None or frame.empty:
        return f'<p class="{css_class} wt-empty">no rows</p>'
    shown = frame[[c for c in columns if c in frame.columns] or list(frame.columns)].head(max_rows)
    body = shown.to_html(index=False, escape=True, na_rep="-", classes=css_class, border=0, max_cols=30)
    more = f"<p>{len(frame) - max_rows} more not shown</p>" if len(frame) > max_rows else ""
    return body + more


def alert_label(row: Mapping[str, Any]) -> str:
    """One line per alert for the pick list: time, kind/family, source -> destination, score."""
    ts = _utc(row["ts"]).strftime("%Y-%m-%d %H:%M:%S")
    what = row["family"] if row.get("kind") == "known" and pd.notna(row.get("family")) else row.get("kind")
    port = "" if pd.isna(row.get("dst_port")) else f":{int(row['dst_port'])}"
    return f"{ts}  {what}  {row['src_ip']} -> {row['dst_ip']}{port}  score {float(row['score']):.2f}"


def register_accessor(name: str = "wt") -> None:
    """Opt in to ``df.wt``: one-line shortcuts to the functions above (nothing is registered on import).

    ``alerts.wt.filter(...)`` is :func:`filter_alerts`, ``conn.wt.timeline(host, ...)`` is
    :func:`host_timeline`, ``conn.wt.compare(a, b, ...)`` is ``behaviour.compare_periods``.
    Registering twice is harmless.
    """
    import warnings

    with warnings.catch_warnings():  # pandas warns when a name is registered again
        warnings.simplefilter("ignore", UserWarning)
        pd.api.extensions.register_dataframe_accessor(name)(WatchtowerAccessor)


class WatchtowerAccessor:
    """``df.wt``: sugar over plain functions; each method is one call (see :func:`register_accessor`)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    def filter(self, **filters: Any) -> pd.DataFrame:
        return filter_alerts(self._frame, **filters)

    def timeline(self, host: str, **kwargs: Any) -> pd.DataFrame:
        return host_timeline(self._frame, host, **kwargs)

    def compare(self, a: Any, b: Any, **kwargs: Any) -> Any:
        from .behaviour import compare_periods

        return compare_periods(self._frame, a, b, **kwargs)


def __getattr__(name: str) -> Any:
    # AnomalyExplorer lives in _explore_widgets (module size); loading it imports ipywidgets,
    # so the plain functions above work without it.
    if name == "AnomalyExplorer":
        from ._explore_widgets import AnomalyExplorer

        return AnomalyExplorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AnomalyExplorer", "LogSource", "filter_alerts", "records_for_uid", "host_timeline",
           "host_timeline_figure", "table_html", "alert_label", "register_accessor", "WatchtowerAccessor"]
