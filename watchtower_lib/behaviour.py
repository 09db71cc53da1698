"""Week-over-week behaviour: what each internal host does differently in period B than in period A.

Why: a detector scores connections one at a time; an analyst also wants to know
which machines *changed* -- a printer that starts talking to forty new addresses,
a workstation busy at 03:00 for the first time, a server whose transfer sizes
shift. :func:`compare_periods` answers that from the conn log alone, for any two
periods (two weeks for the report, the two halves of a capture in the tests).

A host's behaviour is the connections it *originates* (``id.orig_h`` inside
``internal_networks``): connections others open to it are their behaviour, not
its. Everything is computed from plain conn columns, so it needs no trained model.
"""
from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ._behaviour_stats import PSI_BINS, hour_ranges, js_distance, ks_2samp, psi
from .errors import WatchtowerError

log = logging.getLogger(__name__)

__all__ = ["BehaviourComparison", "compare_periods", "psi", "js_distance", "ks_2samp", "hour_ranges",
           "FEATURES", "PSI_BINS", "PSI_NOTABLE"]

#: Per-connection measures whose distribution shift (PSI, KS) is reported.
FEATURES: tuple[str, ...] = ("duration_s", "orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts", "dst_port")
REQUIRED = ("ts", "id.orig_h", "id.resp_h", "id.resp_p", "proto")
DEFAULT_INTERNAL = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
MIN_ROWS_FOR_DRIFT = 20  # fewer connections than this in either period: no PSI for that host
PSI_NOTABLE = 0.25  # the usual rule of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 shifted

Period = tuple[Any, Any]


@dataclass(frozen=True)
class BehaviourComparison:
    """The result of :func:`compare_periods`.

    Attributes
    ----------
    a, b : the two periods as UTC ``(start, end)`` timestamps, end exclusive.
    hosts : one row per internal host seen in either period, ranked by ``change_score``
        (highest first), with counts, changes, distances and ``reasons`` in words.
    new_destinations : ``host, destination, connections`` for destinations seen in B, not A.
    new_ports : ``host, proto, port, service, connections`` for (proto, port) pairs new in B.
    hourly : ``host, period ('a'/'b'), hour (0-23), connections``.
    drift : ``feature, psi, ks_statistic, ks_pvalue, n_a, n_b`` over all internal hosts.
    host_drift : ``host, feature, psi`` for hosts with enough connections in both periods.
    """

    a: tuple[pd.Timestamp, pd.Timestamp]
    b: tuple[pd.Timestamp, pd.Timestamp]
    hosts: pd.DataFrame
    new_destinations: pd.DataFrame
    new_ports: pd.DataFrame
    hourly: pd.DataFrame
    drift: pd.DataFrame
    host_drift: pd.DataFrame

    def ranked(self, n: int = 10, *, changed_only: bool = True) -> pd.DataFrame:
        """The ``n`` hosts whose behaviour changed most, with their reasons.

        ``changed_only`` drops hosts with a zero change score (nothing to say).
        """
        table = self.hosts
        if changed_only:
            table = table[table["change_score"] > 0]
        cols = ["host", "change_score", "reasons", "conns_a", "conns_b", "bytes_a", "bytes_b",
                "new_destinations", "new_ports", "new_services", "hour_js"]
        return table[cols].head(n).reset_index(drop=True)


def compare_periods(
    conn_df: pd.DataFrame,
    a: Period,
    b: Period,
    *,
    internal_networks: Sequence[str] | None = None,
    features: Sequence[str] = FEATURES,
) -> BehaviourComparison:
    """Compare each internal host's behaviour in period ``b`` with period ``a``.

    Parameters
    ----------
    conn_df : a Zeek conn log as read by ``watchtower_lib.zeek.read_log`` or
        ``store.load(..., "conn")`` (``ts`` UTC datetimes; byte/packet counts may be NA).
    a, b : ``(start, end)`` pairs (anything ``pandas.Timestamp`` accepts; naive means UTC);
        start inclusive, end exclusive. ``a`` is the baseline, ``b`` the period judged.
    internal_networks : CIDRs whose addresses are "our" hosts; default RFC 1918 + fc00::/7,
        as ``Settings.internal_networks``.
    features : per-connection measures to test for drift (see :data:`FEATURES`).

    Returns
    -------
    BehaviourComparison

    Raises
    ------
    WatchtowerError
        ``conn_df`` lacks a column the comparison needs (the message lists them).
    ValueError
        A period is not a ``(start, end)`` pair with start before end.
    """
    missing = [c for c in REQUIRED if c not in conn_df.columns]
    if missing:
        raise WatchtowerError(
            f"compare_periods: the conn DataFrame lacks {', '.join(missing)} "
            f"(pass a conn log read by watchtower_lib.zeek.read_log or store.load(..., 'conn'))"
        )
    pa, pb = _period(a, "a"), _period(b, "b")
    nets = [ipaddress.ip_network(n, strict=False) for n in (internal_networks or DEFAULT_INTERNAL)]
    conn = _measures(conn_df, nets)
    ts = conn["ts"]
    in_a = conn[(ts >= pa[0]) & (ts < pa[1])]
    in_b = conn[(ts >= pb[0]) & (ts < pb[1])]
    log.info("compare_periods: %d internal-host connections in A, %d in B", len(in_a), len(in_b))

    new_dest = _new_pairs(in_a, in_b, ["destination"])
    new_ports = _new_pairs(in_a, in_b, ["proto", "port"])
    new_ports = new_ports.merge(_services(in_b), on=["host", "proto", "port"], how="left")
    hourly = _hourly(in_a, in_b)
    drift = _global_drift(in_a, in_b, features)
    host_drift = _host_drift(in_a, in_b, features)
    hosts = _host_table(in_a, in_b, new_dest, new_ports, hourly, host_drift)
    return BehaviourComparison(pa, pb, hosts, new_dest, new_ports, hourly, drift, host_drift)


# -- internals -------------------------------------------------------------------------------

def _period(p: Period, name: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    try:
        start, end = p
    except (TypeError, ValueError):
        raise ValueError(f"period {name} must be a (start, end) pair, got {p!r}") from None
    start, end = _utc(start), _utc(end)
    if not start < end:
        raise ValueError(f"period {name}: start {start} is not before end {end}")
    return start, end


def _utc(value: Any) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _is_internal(addresses: pd.Series, nets: list) -> pd.Series:
    def check(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in nets if net.version == ip.version)

    unique = addresses.dropna().unique()
    verdict = {addr: check(str(addr)) for addr in unique}
    return addresses.map(verdict).fillna(False).astype(bool)


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    s = df[col]
    if pd.api.types.is_timedelta64_dtype(s.dtype):
        return s.dt.total_seconds().astype(float)
    return pd.to_numeric(s, errors="coerce").astype(float)


def _measures(conn_df: pd.DataFrame, nets: list) -> pd.DataFrame:
    """Outbound connections of internal hosts with the plain measures used below."""
    ts = pd.to_datetime(conn_df["ts"], utc=True)
    internal = _is_internal(conn_df["id.orig_h"].astype("string"), nets)
    df = pd.DataFrame({
        "ts": ts,
        "host": conn_df["id.orig_h"].astype("string"),
        "destination": conn_df["id.resp_h"].astype("string"),
        "proto": conn_df["proto"].astype("string"),
        "port": _num(conn_df, "id.resp_p"),
        "service": conn_df["service"].astype("string") if "service" in conn_df else pd.NA,
        "duration_s": _num(conn_df, "duration"),
        "orig_bytes": _num(conn_df, "orig_bytes"),
        "resp_bytes": _num(conn_df, "resp_bytes"),
        "orig_pkts": _num(conn_df, "orig_pkts"),
        "resp_pkts": _num(conn_df, "resp_pkts"),
    })
    df["dst_port"] = df["port"]
    df["bytes"] = df["orig_bytes"].fillna(0) + df["resp_bytes"].fillna(0)
    df["hour"] = df["ts"].dt.hour
    return df[internal.to_numpy() & df["ts"].notna().to_numpy()]


def _new_pairs(in_a: pd.DataFrame, in_b: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """(host, *keys) seen in B and never in A, with their connection count in B."""
    cols = ["host", *keys]
    seen = in_a[cols].dropna().drop_duplicates()
    counts = in_b[cols].dropna().value_counts().rename("connections").reset_index()
    merged = counts.merge(seen.assign(_seen=True), on=cols, how="left")
    out = merged[merged["_seen"].isna()].drop(columns="_seen")
    return out.sort_values(["host", "connections"], ascending=[True, False]).reset_index(drop=True)


def _services(in_b: pd.DataFrame) -> pd.DataFrame:
    """The service Zeek named on each (host, proto, port) in B (most common; NA when none)."""
    named = in_b.dropna(subset=["service"])[["host", "proto", "port", "service"]]
    if named.empty:
        return pd.DataFrame(columns=["host", "proto", "port", "service"]).astype(
            {"host": "string", "proto": "string", "port": float, "service": "string"})
    top = named.value_counts().reset_index().drop_duplicates(["host", "proto", "port"])
    return top[["host", "proto", "port", "service"]]


def _hourly(in_a: pd.DataFrame, in_b: pd.DataFrame) -> pd.DataFrame:
    parts = []
    for name, df in (("a", in_a), ("b", in_b)):
        counts = df.groupby(["host", "hour"]).size().rename("connections").reset_index()
        parts.append(counts.assign(period=name))
    out = pd.concat(parts, ignore_index=True)
    return out[["host", "period", "hour", "connections"]]


def _global_drift(in_a: pd.DataFrame, in_b: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    rows = []
    for feature in features:
        xa = in_a[feature].dropna().to_numpy(dtype=float)
        xb = in_b[feature].dropna().to_numpy(dtype=float)
        stat, pvalue = ks_2samp(xa, xb)
        rows.append({"feature": feature, "psi": psi(xa, xb), "ks_statistic": stat,
                     "ks_pvalue": pvalue, "n_a": len(xa), "n_b": len(xb)})
    return pd.DataFrame(rows, columns=["feature", "psi", "ks_statistic", "ks_pvalue", "n_a", "n_b"])


def _host_drift(in_a: pd.DataFrame, in_b: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    rows = []
    ga, gb = _by_host(in_a, features), _by_host(in_b, features)
    for host in sorted(set(ga) & set(gb)):
        xa, xb = ga[host], gb[host]
        if len(xa) < MIN_ROWS_FOR_DRIFT or len(xb) < MIN_ROWS_FOR_DRIFT:
            continue
        for i, feature in enumerate(features):
            rows.append({"host": host, "feature": feature, "psi": psi(xa[:, i], xb[:, i])})
    return pd.DataFrame(rows, columns=["host", "feature", "psi"])


def _by_host(df: pd.DataFrame, features: Sequence[str]) -> dict[str, np.ndarray]:
    """host -> (rows, features) float array: one sort and slices, not a DataFrame per host."""
    if df.empty:
        return {}
    hosts = df["host"].to_numpy(dtype=object)
    order = np.argsort(hosts, kind="stable")
    hosts = hosts[order]
    values = df[list(features)].to_numpy(dtype=float, na_value=np.nan)[order]
    starts = np.flatnonzero(np.r_[True, hosts[1:] != hosts[:-1]])
    ends = np.r_[starts[1:], len(hosts)]
    return {hosts[s]: values[s:e] for s, e in zip(starts, ends)}


def _pct(before: float, after: float) -> float:
    return float("nan") if before == 0 else 100.0 * (after - before) / before


def _host_table(in_a, in_b, new_dest, new_ports, hourly, host_drift) -> pd.DataFrame:
    hosts = sorted(set(in_a["host"].dropna().unique()) | set(in_b["host"].dropna().unique()))
    agg_a = in_a.groupby("host").agg(conns=("ts", "size"), bytes=("bytes", "sum"),
                                     dests=("destination", "nunique"))
    agg_b = in_b.groupby("host").agg(conns=("ts", "size"), bytes=("bytes", "sum"),
                                     dests=("destination", "nunique"))
    n_new_dest = new_dest.groupby("host").size()
    n_new_ports = new_ports.groupby("host").size()
    new_services = new_ports.dropna(subset=["service"]).groupby("host")["service"].agg(
        lambda s: sorted(set(s)))
    profiles = {period: _profiles(hourly[hourly["period"] == period]) for period in ("a", "b")}
    zeros = np.zeros(24)
    scored = host_drift.dropna(subset=["psi"])
    worst_drift = {row["host"]: row for row in
                   scored.loc[scored.groupby("host")["psi"].idxmax()].to_dict("records")} if len(scored) else {}
    idx = pd.Index(hosts, name="host")
    base = pd.DataFrame({
        "conns_a": agg_a["conns"].reindex(idx, fill_value=0), "conns_b": agg_b["conns"].reindex(idx, fill_value=0),
        "bytes_a": agg_a["bytes"].reindex(idx, fill_value=0.0), "bytes_b": agg_b["bytes"].reindex(idx, fill_value=0.0),
        "destinations_a": agg_a["dests"].reindex(idx, fill_value=0),
        "destinations_b": agg_b["dests"].reindex(idx, fill_value=0),
        "new_destinations": n_new_dest.reindex(idx, fill_value=0),
        "new_ports": n_new_ports.reindex(idx, fill_value=0),
    }, index=idx).reset_index()
    rows = []
    for row in base.to_dict("records"):
        host, ca, cb = row["host"], int(row["conns_a"]), int(row["conns_b"])
        ba, bb = float(row["bytes_a"]), float(row["bytes_b"])
        ha, hb = profiles["a"].get(host, zeros), profiles["b"].get(host, zeros)
        worst = worst_drift.get(host)
        row.update({
            "conns_a": ca, "conns_b": cb, "conns_change_pct": _pct(ca, cb),
            "bytes_a": ba, "bytes_b": bb, "bytes_change_pct": _pct(ba, bb),
            "destinations_a": int(row["destinations_a"]), "destinations_b": int(row["destinations_b"]),
            "new_destinations": int(row["new_destinations"]), "new_ports": int(row["new_ports"]),
            "new_services": list(new_services.get(host, [])),
            "hour_js": js_distance(ha, hb),
            "new_hours": [h for h in range(24) if hb[h] > 0 and ha[h] == 0] if ca else [],
            "max_psi": float(worst["psi"]) if worst is not None else float("nan"),
            "max_psi_feature": worst["feature"] if worst is not None else None,
        })
        row["change_score"] = _score(row)
        row["reasons"] = _reasons(row)
        rows.append(row)
    columns = ["host", "change_score", "reasons", "conns_a", "conns_b", "conns_change_pct", "bytes_a",
               "bytes_b", "bytes_change_pct", "destinations_a", "destinations_b", "new_destinations",
               "new_ports", "new_services", "hour_js", "new_hours", "max_psi", "max_psi_feature"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["change_score", "conns_b"], ascending=False, kind="stable").reset_index(drop=True)


def _profiles(hourly: pd.DataFrame) -> dict[str, np.ndarray]:
    """host -> 24 connection counts by hour of day (one pivot, not one filter per host)."""
    if hourly.empty:
        return {}
    table = hourly.pivot_table(index="host", columns="hour", values="connections", aggfunc="sum", fill_value=0)
    table = table.reindex(columns=range(24), fill_value=0)
    return dict(zip(table.index, table.to_numpy(dtype=float)))


def _score(row: dict) -> float:
    """One number to rank hosts by; each term is about 1 for a notable change.

    log2 of (1 + new destinations), of (1 + new ports), |log2| of the connection and byte
    ratios, twice the hour-profile JS distance, and the largest feature PSI over 0.25
    (capped at 4). A host new in B scores its activity; a host silent in B scores 1.
    """
    if row["conns_a"] == 0:
        return float(np.log2(1 + row["conns_b"]) + np.log2(1 + row["new_destinations"]))
    if row["conns_b"] == 0:
        return 1.0
    score = np.log2(1 + row["new_destinations"]) + np.log2(1 + row["new_ports"])
    score += abs(np.log2((row["conns_b"] + 1) / (row["conns_a"] + 1)))
    score += abs(np.log2((row["bytes_b"] + 1) / (row["bytes_a"] + 1)))
    if not np.isnan(row["hour_js"]):
        score += 2 * row["hour_js"]
    if not np.isnan(row["max_psi"]):
        score += min(row["max_psi"] / PSI_NOTABLE, 4.0)
    return round(float(score), 3)


def _signed_pct(value: float) -> str:
    return f"{value:+.0f}%"


def _reasons(row: dict) -> str:
    """The change in words, most telling first."""
    if row["conns_a"] == 0:
        return f"new host: {row['conns_b']} connections to {row['destinations_b']} destinations, none before"
    if row["conns_b"] == 0:
        return f"silent: no connections (had {row['conns_a']})"
    parts = []
    nd, npo = row["new_destinations"], row["new_ports"]
    if nd:
        parts.append(f"{nd} new destination{'s' if nd != 1 else ''}")
    if npo:
        parts.append(f"{npo} new destination port{'s' if npo != 1 else ''}")
    if row["new_services"]:
        parts.append("new services " + ", ".join(row["new_services"]))
    for key, what in (("conns_change_pct", "connections"), ("bytes_change_pct", "bytes")):
        value = row[key]
        if not np.isnan(value) and abs(value) >= 25:
            parts.append(f"{_signed_pct(value)} {what}")
    if row["new_hours"]:
        parts.append(f"active at {hour_ranges(row['new_hours'])} for the first time")
    elif not np.isnan(row["hour_js"]) and row["hour_js"] >= 0.3:
        parts.append(f"hour-of-day profile changed (JS distance {row['hour_js']:.2f})")
    if not np.isnan(row["max_psi"]) and row["max_psi"] >= PSI_NOTABLE:
        parts.append(f"{row['max_psi_feature']} distribution shifted (PSI {row['max_psi']:.2f})")
    return ", ".join(parts) if parts else "no notable change"
