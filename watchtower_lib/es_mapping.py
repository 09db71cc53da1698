"""The Zeek <-> ECS field table, and the index templates built from it.

Why a table: one list says where each Zeek column lives in Elasticsearch, with
which Elasticsearch type and which Zeek type, so the same table builds the
index templates (``install_templates``), renames columns on the way in
(``index_logs``), renames them back on the way out (``search_df``) and is
printed as the documentation (``docs/ecs.md``, checked equal by a test).

Names follow Elastic's own Zeek integration (``source.ip``, ``source.bytes``
from ``orig_ip_bytes``, ``event.duration`` in nanoseconds, ``zeek.session_id``
for ``uid``); everything without an ECS home goes to ``zeek.<log>.<zeek name>``.
Timestamps are ``date_nanos`` rather than ECS's ``date`` so that Zeek's
microseconds survive a round trip exactly (range queries, sorting and Kibana
work on both).

The value conversions live here too (``to_python`` on the way in,
``frame_from_sources`` on the way out), so that "what a Zeek value looks like in
Elasticsearch" is answered in one module: times as ISO-8601 with nanoseconds,
intervals as integer nanoseconds, unset as an absent field.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

ECS_VERSION = "8.11.0"


@dataclass(frozen=True)
class Field:
    """One Zeek column and its home in Elasticsearch."""

    zeek: str  # Zeek's column name, e.g. "id.orig_h"
    ecs: str  # the Elasticsearch field, e.g. "source.ip"
    es_type: str  # Elasticsearch mapping type
    zeek_type: str  # Zeek's type ("addr", "count", "vector[string]", ...)


# Columns every log shares (Zeek's conn_id plus ts/uid).
_COMMON = [
    ("ts", "@timestamp", "date_nanos", "time"),
    ("uid", "zeek.session_id", "keyword", "string"),
    ("id.orig_h", "source.ip", "ip", "addr"),
    ("id.orig_p", "source.port", "long", "port"),
    ("id.resp_h", "destination.ip", "ip", "addr"),
    ("id.resp_p", "destination.port", "long", "port"),
    ("proto", "network.transport", "keyword", "enum"),
]

# log type -> (zeek, ecs or None for zeek.<log>.<zeek>, es type, zeek type); common columns first.
_LOGS: dict[str, list[tuple[str, str | None, str, str]]] = {
    "conn": [
        ("service", "network.protocol", "keyword", "string"),
        ("duration", "event.duration", "long", "interval"),
        ("orig_bytes", None, "long", "count"),
        ("resp_bytes", None, "long", "count"),
        ("conn_state", None, "keyword", "string"),
        ("local_orig", None, "boolean", "bool"),
        ("local_resp", None, "boolean", "bool"),
        ("missed_bytes", None, "long", "count"),
        ("history", None, "keyword", "string"),
        ("orig_pkts", "source.packets", "long", "count"),
        ("orig_ip_bytes", "source.bytes", "long", "count"),
        ("resp_pkts", "destination.packets", "long", "count"),
        ("resp_ip_bytes", "destination.bytes", "long", "count"),
        ("tunnel_parents", None, "keyword", "set[string]"),
        ("orig_l2_addr", "source.mac", "keyword", "string"),
        ("resp_l2_addr", "destination.mac", "keyword", "string"),
        ("vlan", "network.vlan.id", "keyword", "int"),
        ("inner_vlan", "network.inner.vlan.id", "keyword", "int"),
        ("community_id", "network.community_id", "keyword", "string"),
    ],
    "dns": [
        ("trans_id", "dns.id", "keyword", "count"),
        ("rtt", None, "long", "interval"),
        ("query", "dns.question.name", "keyword", "string"),
        ("qclass", None, "long", "count"),
        ("qclass_name", "dns.question.class", "keyword", "string"),
        ("qtype", None, "long", "count"),
        ("qtype_name", "dns.question.type", "keyword", "string"),
        ("rcode", None, "long", "count"),
        ("rcode_name", "dns.response_code", "keyword", "string"),
        ("AA", None, "boolean", "bool"),
        ("TC", None, "boolean", "bool"),
        ("RD", None, "boolean", "bool"),
        ("RA", None, "boolean", "bool"),
        ("Z", None, "long", "count"),
        ("answers", None, "keyword", "vector[string]"),
        ("TTLs", None, "long", "vector[interval]"),
        ("rejected", None, "boolean", "bool"),
    ],
    "http": [
        ("trans_depth", None, "long", "count"),
        ("method", "http.request.method", "keyword", "string"),
        ("host", "url.domain", "keyword", "string"),
        ("uri", "url.original", "keyword", "string"),
        ("referrer", "http.request.referrer", "keyword", "string"),
        ("version", "http.version", "keyword", "string"),
        ("user_agent", "user_agent.original", "keyword", "string"),
        ("origin", None, "keyword", "string"),
        ("request_body_len", "http.request.body.bytes", "long", "count"),
        ("response_body_len", "http.response.body.bytes", "long", "count"),
        ("status_code", "http.response.status_code", "long", "count"),
        ("status_msg", None, "keyword", "string"),
        ("info_code", None, "long", "count"),
        ("info_msg", None, "keyword", "string"),
        ("tags", None, "keyword", "set[enum]"),
        ("username", "url.username", "keyword", "string"),
        ("password", None, "keyword", "string"),
        ("proxied", None, "keyword", "set[string]"),
        ("orig_fuids", None, "keyword", "vector[string]"),
        ("orig_filenames", None, "keyword", "vector[string]"),
        ("orig_mime_types", "http.request.mime_type", "keyword", "vector[string]"),
        ("resp_fuids", None, "keyword", "vector[string]"),
        ("resp_filenames", None, "keyword", "vector[string]"),
        ("resp_mime_types", "http.response.mime_type", "keyword", "vector[string]"),
    ],
    "ssl": [
        ("version", None, "keyword", "string"),  # "TLSv12": not ECS's tls.version ("1.2")
        ("cipher", "tls.cipher", "keyword", "string"),
        ("curve", "tls.curve", "keyword", "string"),
        ("server_name", "tls.client.server_name", "keyword", "string"),
        ("resumed", "tls.resumed", "boolean", "bool"),
        ("last_alert", None, "keyword", "string"),
        ("next_protocol", "tls.next_protocol", "keyword", "string"),
        ("established", "tls.established", "boolean", "bool"),
        ("ssl_history", None, "keyword", "string"),
        ("cert_chain_fuids", None, "keyword", "vector[string]"),
        ("client_cert_chain_fuids", None, "keyword", "vector[string]"),
        ("cert_chain_fps", None, "keyword", "vector[string]"),
        ("client_cert_chain_fps", None, "keyword", "vector[string]"),
        ("subject", "tls.server.subject", "keyword", "string"),
        ("issuer", "tls.server.issuer", "keyword", "string"),
        ("client_subject", "tls.client.subject", "keyword", "string"),
        ("client_issuer", "tls.client.issuer", "keyword", "string"),
        ("sni_matches_cert", None, "boolean", "bool"),
        ("validation_status", None, "keyword", "string"),
        ("ja3", "tls.client.ja3", "keyword", "string"),
        ("ja3s", "tls.server.ja3s", "keyword", "string"),
    ],
    "notice": [
        ("fuid", None, "keyword", "string"),
        ("file_mime_type", "file.mime_type", "keyword", "string"),
        ("file_desc", None, "keyword", "string"),
        ("note", "rule.name", "keyword", "enum"),
        ("msg", "rule.description", "keyword", "string"),
        ("sub", None, "keyword", "string"),
        ("src", None, "ip", "addr"),
        ("dst", None, "ip", "addr"),
        ("p", None, "long", "port"),
        ("n", None, "long", "count"),
        ("peer_descr", None, "keyword", "string"),
        ("actions", None, "keyword", "set[enum]"),
        ("suppress_for", None, "long", "interval"),
        ("dropped", None, "boolean", "bool"),
    ],
    "weird": [
        ("name", "rule.name", "keyword", "string"),
        ("addl", None, "keyword", "string"),
        ("notice", None, "boolean", "bool"),
        ("peer", None, "keyword", "string"),
        ("source", None, "keyword", "string"),
    ],
}

LOG_TYPES: tuple[str, ...] = tuple(_LOGS)

# Alerts (watchtower_lib.alerts.ALERT_COLUMNS): column -> (ecs field, es type). Columns not
# listed go to watchtower.alert.<column>; explanation_json is kept in _source, not indexed.
ALERT_FIELDS: dict[str, tuple[str, str]] = {
    "id": ("event.id", "keyword"),
    "ts": ("@timestamp", "date_nanos"),
    "sensor": ("observer.name", "keyword"),
    "src_ip": ("source.ip", "ip"),
    "src_port": ("source.port", "long"),
    "dst_ip": ("destination.ip", "ip"),
    "dst_port": ("destination.port", "long"),
    "proto": ("network.transport", "keyword"),
    "service": ("network.protocol", "keyword"),
    "kind": ("rule.category", "keyword"),
    "family": ("rule.name", "keyword"),
    "score": ("event.risk_score", "double"),
    "severity": ("watchtower.alert.severity", "keyword"),
    "explanation": ("message", "text"),
    "explanation_json": ("watchtower.alert.explanation_json", "keyword"),
    "uid": ("zeek.session_id", "keyword"),
    "model_version": ("watchtower.alert.model_version", "keyword"),
    "incident_id": ("watchtower.alert.incident_id", "keyword"),
}


def fields(log_type: str) -> list[Field]:
    """The table rows for ``log_type`` (common columns first); empty tail for unknown logs."""
    rows = [Field(z, e, t, zt) for z, e, t, zt in _COMMON]
    for zeek, ecs, es_type, zeek_type in _LOGS.get(log_type, []):
        rows.append(Field(zeek, ecs or f"zeek.{log_type}.{zeek}", es_type, zeek_type))
    return rows


def zeek_to_ecs(log_type: str) -> dict[str, str]:
    """Zeek column -> ECS field for ``log_type``; columns not listed map by :func:`ecs_name`."""
    return {f.zeek: f.ecs for f in fields(log_type)}


def ecs_name(log_type: str, column: str) -> str:
    """Where ``column`` of ``log_type`` is stored: the table's field, else ``zeek.<log>.<column>``."""
    return zeek_to_ecs(log_type).get(column, f"zeek.{log_type}.{column}")


def zeek_name(log_type: str, field: str) -> str | None:
    """The Zeek column an ECS field came from (inverse of :func:`ecs_name`); None if derived."""
    for f in fields(log_type):
        if f.ecs == field:
            return f.zeek
    prefix = f"zeek.{log_type}."
    if field.startswith(prefix):
        return field[len(prefix):]
    return None


# Zeek type -> the reader's pandas dtype (the contract of watchtower_lib.zeek).
ZEEK_DTYPES = {
    "time": "datetime64[ns, UTC]", "interval": "timedelta64[ns]", "count": "UInt64",
    "int": "Int64", "port": "UInt16", "double": "Float64", "bool": "boolean",
    "addr": "string", "subnet": "string", "string": "string", "enum": "string",
}


def dtype_for(zeek_type: str) -> str:
    """The pandas dtype the Zeek reader gives a column of ``zeek_type`` (lists stay ``object``)."""
    if zeek_type.startswith(("set[", "vector[", "table[")):
        return "object"
    return ZEEK_DTYPES.get(zeek_type, "string")


def es_type_for_dtype(dtype: str) -> str:
    """Elasticsearch type for a column not in the table, from its pandas dtype."""
    d = dtype.lower()
    if d.startswith("datetime64"):
        return "date_nanos"
    if d.startswith("timedelta64") or "int" in d:
        return "long"
    if "float" in d:
        return "double"
    if d in ("bool", "boolean"):
        return "boolean"
    return "keyword"


def props(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Dotted field -> type pairs as an Elasticsearch ``properties`` tree."""
    root: dict[str, Any] = {}
    for name, es_type in pairs:
        node = root
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {"properties": {}})["properties"]
        leaf: dict[str, Any] = {"type": es_type}
        if es_type == "keyword":
            leaf["ignore_above"] = 8191
        node[parts[-1]] = leaf
    return root


def base_component(prefix: str) -> dict[str, Any]:
    """Component template shared by every Watch Tower index: ECS basics and dynamic rules."""
    return {
        "template": {
            "settings": {"index": {"number_of_shards": 1, "number_of_replicas": 0,
                                   "refresh_interval": "5s", "mapping.total_fields.limit": 2000}},
            "mappings": {
                "dynamic_templates": [
                    {"strings": {"match_mapping_type": "string",
                                 "mapping": {"type": "keyword", "ignore_above": 8191}}},
                    {"floats": {"match_mapping_type": "double", "mapping": {"type": "double"}}},
                ],
                "properties": props([
                    ("@timestamp", "date_nanos"), ("ecs.version", "keyword"),
                    ("event.kind", "keyword"), ("event.category", "keyword"),
                    ("event.dataset", "keyword"), ("event.module", "keyword"),
                    ("event.id", "keyword"), ("zeek.session_id", "keyword"),
                    ("source.ip", "ip"), ("source.port", "long"),
                    ("destination.ip", "ip"), ("destination.port", "long"),
                    ("network.transport", "keyword"), ("network.protocol", "keyword"),
                ]),
            },
        },
        "_meta": {"description": "Watch Tower: ECS basics shared by Zeek log and alert indices"},
    }


def log_template(prefix: str, log_type: str) -> dict[str, Any]:
    """Composable index template for ``<prefix>-zeek-<log_type>-*``."""
    rows = fields(log_type) if log_type in _LOGS else []
    meta = {"columns": {f.zeek: {"ecs": f.ecs, "zeek_type": f.zeek_type} for f in rows}}
    return {
        "index_patterns": [f"{prefix}-zeek-{log_type}-*"],
        "composed_of": [f"{prefix}-ecs-base"],
        "priority": 200,
        "template": {"mappings": {"properties": props([(f.ecs, f.es_type) for f in rows]),
                                  "_meta": {"watchtower": {"log_type": log_type, **meta}}}},
        "_meta": {"description": f"Watch Tower: Zeek {log_type}.log, ECS-mapped (docs/ecs.md)"},
    }


def fallback_template(prefix: str) -> dict[str, Any]:
    """Template for other Zeek logs (``<prefix>-zeek-*``): base mappings, columns mapped at index time."""
    return {"index_patterns": [f"{prefix}-zeek-*"], "composed_of": [f"{prefix}-ecs-base"],
            "priority": 100,
            "_meta": {"description": "Watch Tower: other Zeek logs (columns typed by index_logs)"}}


def alerts_template(prefix: str) -> dict[str, Any]:
    """Composable index template for ``<prefix>-alerts*``."""
    pairs = [(ecs, es_type) for ecs, es_type in ALERT_FIELDS.values()]
    tree = props(pairs)
    tree["watchtower"]["properties"]["alert"]["properties"]["explanation_json"] = {
        "type": "keyword", "index": False, "doc_values": False}
    return {
        "index_patterns": [f"{prefix}-alerts*"],
        "composed_of": [f"{prefix}-ecs-base"],
        "priority": 200,
        "template": {"mappings": {"properties": tree,
                                  "_meta": {"watchtower": {"log_type": "alerts"}}}},
        "_meta": {"description": "Watch Tower alerts (watchtower_lib.alerts), ECS-mapped"},
    }


def markdown_table() -> str:
    """The field table as Markdown (the body of docs/ecs.md's mapping section)."""
    lines = ["| log | Zeek column | Zeek type | Elasticsearch field | ES type |",
             "|---|---|---|---|---|"]
    for f in fields("*"):
        lines.append(f"| all | `{f.zeek}` | {f.zeek_type} | `{f.ecs}` | {f.es_type} |")
    for log_type in LOG_TYPES:
        for f in fields(log_type)[len(_COMMON):]:
            lines.append(f"| {log_type} | `{f.zeek}` | {f.zeek_type} | `{f.ecs}` | {f.es_type} |")
    for column, (ecs, es_type) in ALERT_FIELDS.items():
        lines.append(f"| alerts | `{column}` | - | `{ecs}` | {es_type} |")
    return "\n".join(lines)


def month_indices(ts: pd.Series, base: str) -> list[str]:
    """``base-YYYY.MM`` per row from ``ts`` (``base-undated`` where ts is unset)."""
    ts = pd.to_datetime(ts, utc=True)
    months = np.datetime_as_string(ts.dt.tz_convert(None).to_numpy(dtype="datetime64[ns]"), unit="M")
    return [f"{base}-{s.replace('-', '.')}" if s != "NaT" else f"{base}-undated" for s in months]


def column_meta(df: pd.DataFrame, names: list[str], zeek_types: dict[str, str]) -> dict[str, Any]:
    """What search_df needs to give the columns back: order, names and dtypes."""
    cols: dict[str, Any] = {}
    for column, name in zip(df.columns, names):
        dtype = df[column].dtype
        entry = {"ecs": name, "dtype": str(dtype)}
        if isinstance(dtype, pd.ArrowDtype):  # lists: pandas cannot parse these names back
            entry.update(dtype="arrow", arrow=str(dtype.pyarrow_dtype.value_type)
                         if pa.types.is_list(dtype.pyarrow_dtype) else str(dtype.pyarrow_dtype))
            entry["container"] = "list" if pa.types.is_list(dtype.pyarrow_dtype) else "scalar"
        if column in zeek_types:
            entry["zeek_type"] = zeek_types[column]
        element = list_element_kind(df[column]) if entry["dtype"] == "object" else None
        if element:
            entry["elements"] = element
        cols[str(column)] = entry
    return {"order": [str(c) for c in df.columns], "columns": cols}


def list_element_kind(s: pd.Series) -> str | None:
    for value in s:
        if isinstance(value, (list, tuple, np.ndarray)) and len(value):
            first = value[0]
            if isinstance(first, (pd.Timedelta, np.timedelta64)) or hasattr(first, "total_seconds"):
                return "timedelta64[ns]"
            return None
    return None


def to_python(s: pd.Series) -> list[Any]:
    """A column as JSON-ready Python values (None for unset), vectorised where it matters."""
    dtype = str(s.dtype)
    if dtype.startswith("datetime64"):
        ns = pd.to_datetime(s, utc=True).dt.tz_convert(None).to_numpy(dtype="datetime64[ns]")
        text = np.datetime_as_string(ns, unit="ns")
        return [None if t == "NaT" else t + "Z" for t in text.tolist()]
    if dtype.startswith("timedelta64"):
        ints = s.to_numpy(dtype="timedelta64[ns]").view("int64")
        mask = s.isna().to_numpy()
        return [None if na else v for v, na in zip(ints.tolist(), mask.tolist())]
    if dtype == "object":
        return [plain(v) for v in s.tolist()]
    arr = pa.Array.from_pandas(s)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    kind = arr.type.value_type if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) else arr.type
    if pa.types.is_duration(kind) or pa.types.is_timestamp(kind):
        if pa.types.is_timestamp(kind):
            return [plain(v) for v in s.tolist()]
        unit_ns = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[kind.unit]
        as_int = arr.cast(pa.list_(pa.int64()) if kind is not arr.type else pa.int64()).to_pylist()
        if kind is arr.type:
            return [None if v is None else v * unit_ns for v in as_int]
        return [None if v is None else [None if x is None else x * unit_ns for x in v] for v in as_int]
    return arr.to_pylist()


def plain(value: Any) -> Any:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, (pd.Timedelta, np.timedelta64)) or hasattr(value, "total_seconds"):
        return int(pd.Timedelta(value).value)
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        return pd.Timestamp(value).tz_localize(None).isoformat() + "Z" if pd.Timestamp(value).tzinfo is None \
            else pd.Timestamp(value).tz_convert(None).isoformat() + "Z"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


DERIVED = frozenset({"event.kind", "event.category", "event.dataset", "event.module", "ecs.version"})


def flatten(source: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A ``_source`` as dotted keys, whether it was sent dotted (ours) or nested (others')."""
    out: dict[str, Any] = {}
    for key, value in source.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def reverse_names(log_type: str, meta: Mapping[str, Any]) -> dict[str, str]:
    """ECS field -> column for one index: its recorded columns, then the table."""
    names: dict[str, str] = {}
    if log_type == "alerts":
        names.update({ecs: col for col, (ecs, _) in ALERT_FIELDS.items()})
    else:
        names.update({f.ecs: f.zeek for f in fields(log_type)})
    for column, entry in meta.get("columns", {}).items():
        names[entry["ecs"]] = column
    return names


def column_name(log_type: str, field: str, names: Mapping[str, str]) -> str:
    if field in names:
        return names[field]
    for prefix in (f"zeek.{log_type}.", "watchtower.alert."):
        if field.startswith(prefix):
            return field[len(prefix):]
    return field


def frame_from_sources(rows: list[dict[str, Any]], log_type: str, meta: Mapping[str, Any],
                       wanted: list[str] | None = None) -> pd.DataFrame:
    """Rows already renamed to columns -> a DataFrame with the dtypes the Zeek reader gives.

    Dtypes come from the index's recorded columns (``meta``), else from the table's
    Zeek types; columns come in the recorded order, unknown ones after.
    """
    recorded = meta.get("columns", {})
    table = {f.zeek: dtype_for(f.zeek_type) for f in fields(log_type)} if log_type != "alerts" else {}
    order = [c for c in meta.get("order", []) if wanted is None or c in wanted]
    present = {c for row in rows for c in row}
    if wanted is not None:
        order += [c for c in wanted if c not in order]
    else:
        order += sorted(present - set(order))
    data = {}
    for column in order:
        values = [row.get(column) for row in rows]
        entry = recorded.get(column, {})
        dtype = entry.get("dtype") or table.get(column)
        data[column] = _typed(values, dtype, entry.get("elements"), entry)
    return pd.DataFrame(data, index=pd.RangeIndex(len(rows)))


def _typed(values: list[Any], dtype: str | None, elements: str | None,
           entry: Mapping[str, Any] | None = None) -> Any:
    if dtype == "arrow" and entry is not None:
        inner = pa.type_for_alias(entry["arrow"])
        numeric = pa.types.is_duration(inner)
        if entry.get("container") == "list":
            arr = pa.array(values, type=pa.list_(pa.int64() if numeric else inner))
            arr = arr.cast(pa.list_(inner)) if numeric else arr
        else:
            arr = pa.array(values, type=pa.int64() if numeric else inner)
            arr = arr.cast(inner) if numeric else arr
        return pd.arrays.ArrowExtensionArray(arr)
    if dtype is None:
        return pd.array(values) if any(v is not None for v in values) else pd.array(values, dtype="object")
    if dtype.startswith("datetime64"):
        stamps = pd.to_datetime(pd.Series(values, dtype="object"), utc=True, format="ISO8601")
        return stamps.astype(dtype if "UTC" in dtype else "datetime64[ns, UTC]").array
    if dtype.startswith("timedelta64"):
        ints = np.array([np.iinfo(np.int64).min if v is None else int(v) for v in values], dtype="int64")
        return pd.array(ints.view("timedelta64[ns]")).astype(dtype)
    if dtype == "object":
        if elements == "timedelta64[ns]":
            return [None if v is None else [pd.Timedelta(int(x), unit="ns") if x is not None else None
                                            for x in v] for v in values]
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    try:
        return pd.array(values, dtype=dtype)
    except (TypeError, ValueError):  # a value the index holds but the dtype cannot: keep it visible
        return pd.array(values, dtype="object")
