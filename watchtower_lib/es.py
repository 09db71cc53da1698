"""Elasticsearch: ECS-mapped Zeek logs and alerts in, DataFrames back out.

Why: the SOC's dashboards and alerting live in Elasticsearch, and stores too
large for pandas can be aggregated there. The local Parquet store stays the
source of truth; this module is a copy that a re-run can always catch up
(deterministic ``_id`` + ``create``: indexing the same rows twice adds nothing).

Indices are ``<prefix>-zeek-<log>-YYYY.MM`` (by month of ``ts``) and
``<prefix>-alerts``; the field table is :mod:`watchtower_lib.es_mapping`
(``docs/ecs.md``). The ``elasticsearch`` client is an optional extra
(``pip install 'watchtower-zeek[es]'``) imported on first use.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from . import es_mapping as m
from .errors import ConfigError, IntegrationError, MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    from elasticsearch import Elasticsearch

    from .config import Settings

log = logging.getLogger(__name__)

HOW_TO_START = ("start a local node with `scripts/es-node start` and set WATCHTOWER_ES_URL to the URL "
                "it prints, or fix elasticsearch.url in the config")


def _elasticsearch():
    try:
        import elasticsearch
        import elasticsearch.helpers  # noqa: F401
    except ImportError:
        raise MissingDependencyError("elasticsearch", "es") from None
    return elasticsearch


def client(settings: Settings | None = None) -> Elasticsearch:
    """An Elasticsearch client from ``settings.elasticsearch`` (default: ``config.load()``).

    Secrets come from the environment variables the config names (``api_key_env``,
    ``password_env``), never from the file. ``WATCHTOWER_ES_URL`` overrides the URL.

    Raises
    ------
    ConfigError
        No URL is configured, or a named secret variable is unset.
    MissingDependencyError
        The ``elasticsearch`` package is not installed (extra ``es``).
    """
    if settings is None:
        from .config import load

        settings = load()
    cfg = settings.elasticsearch
    if not cfg.url:
        raise ConfigError("elasticsearch.url is not set: set it in the config or WATCHTOWER_ES_URL "
                          "(a local test node: scripts/es-node start)")
    es_mod = _elasticsearch()
    kwargs: dict[str, Any] = {"request_timeout": cfg.request_timeout, "max_retries": cfg.max_retries,
                              "retry_on_timeout": True, "verify_certs": cfg.verify_certs}
    if cfg.ca_certs is not None:
        kwargs["ca_certs"] = str(cfg.ca_certs)
    if cfg.api_key_env:
        kwargs["api_key"] = _secret(cfg.api_key_env, "api_key_env")
    elif cfg.username:
        password = _secret(cfg.password_env, "password_env") if cfg.password_env else ""
        kwargs["basic_auth"] = (cfg.username, password)
    return es_mod.Elasticsearch(cfg.url, **kwargs)


def _secret(var: str, key: str) -> str:
    value = os.environ.get(var)
    if value is None:
        raise ConfigError(f"elasticsearch.{key} names {var!r} but that environment variable is not set")
    return value


def url_of(es: Elasticsearch) -> str:
    """The node URL a client talks to (for messages)."""
    try:
        return ", ".join(str(node.base_url) for node in es.transport.node_pool.all())
    except Exception:  # pragma: no cover - defensive, messages only
        return "the configured Elasticsearch"


@contextmanager
def _guard(es: Elasticsearch, what: str) -> Iterator[None]:
    """Turn the client's transport and API errors into an IntegrationError that says what to do."""
    es_mod = _elasticsearch()
    try:
        yield
    except es_mod.ApiError as exc:
        status = getattr(exc, "status_code", None) or getattr(getattr(exc, "meta", None), "status", "?")
        hint = " (check the API key / username and password)" if status in (401, 403) else ""
        raise IntegrationError(f"Elasticsearch at {url_of(es)} refused {what}: HTTP {status} "
                               f"{exc.message}{hint}") from exc
    except es_mod.TransportError as exc:
        raise IntegrationError(f"Elasticsearch at {url_of(es)} is unreachable while trying to {what} "
                               f"({type(exc).__name__}: {exc}); {HOW_TO_START}") from exc


def _resolve(es: Elasticsearch | None, settings: Settings | None) -> tuple[Elasticsearch, str]:
    if settings is None:
        from .config import load

        settings = load()
    return (es if es is not None else client(settings)), settings.elasticsearch.index_prefix


def ping(es: Elasticsearch | None = None, *, settings: Settings | None = None) -> dict[str, Any]:
    """Cluster health (``GET /_cluster/health``); raises IntegrationError when the node is down."""
    es, _ = _resolve(es, settings)
    with _guard(es, "report its health"):
        return dict(es.cluster.health())


def install_templates(es: Elasticsearch | None = None, *, settings: Settings | None = None) -> list[str]:
    """Install (or update) the composable index templates for Zeek logs and alerts.

    One component template with the ECS basics, one index template per log type
    of :data:`es_mapping.LOG_TYPES`, a lower-priority one for other Zeek logs, and
    one for alerts. Idempotent: run it on every start.

    Returns
    -------
    list of str: the index template names installed.
    """
    es, prefix = _resolve(es, settings)
    names = []
    with _guard(es, "install index templates"):
        es.cluster.put_component_template(name=f"{prefix}-ecs-base", **m.base_component(prefix))
        for log_type in m.LOG_TYPES:
            name = f"{prefix}-zeek-{log_type}"
            es.indices.put_index_template(name=name, **m.log_template(prefix, log_type))
            names.append(name)
        es.indices.put_index_template(name=f"{prefix}-zeek-other", **m.fallback_template(prefix))
        es.indices.put_index_template(name=f"{prefix}-alerts", **m.alerts_template(prefix))
        names += [f"{prefix}-zeek-other", f"{prefix}-alerts"]
    log.info("installed %d index templates at %s", len(names), url_of(es))
    return names


@dataclass
class BulkReport:
    """What one bulk load did: ``created`` new documents, ``existing`` ones already there
    (a re-run), ``failed`` rejected ones (e.g. a mapping conflict) with ``errors`` by type
    and the first few ``samples`` (id, index, reason) to act on."""

    created: int = 0
    existing: int = 0
    failed: int = 0
    errors: Counter = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)
    indices: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.created + self.existing + self.failed


def index_logs(df: pd.DataFrame, log_type: str, *, es: Elasticsearch | None = None,
               settings: Settings | None = None, chunk_size: int = 1000, threads: int = 4,
               bulk_load: bool | None = None, refresh: bool = False) -> BulkReport:
    """Index a parsed Zeek log (``watchtower_lib.zeek.read_log``) as ECS documents.

    Each row gets ``_id`` = a hash of its log type and values and is sent with
    ``op_type=create``, so a re-run only reports ``existing``. Rows go to
    ``<prefix>-zeek-<log_type>-YYYY.MM`` by ``ts``. Bulk requests answered with 429
    are retried with back-off (``max_retries`` from the config); a document the
    node rejects (say, ``id.orig_h`` that is not an IP) is counted in
    ``failed``, never raised.

    Parameters
    ----------
    df : the log, Zeek column names and the reader's dtypes.
    log_type : "conn", "dns", ... (Zeek's ``#path``).
    chunk_size : documents per bulk request.
    threads : bulk requests in flight at once.
    bulk_load : turn refresh off and fsync the translog asynchronously during the load
        (default: for more than 50,000 rows); the previous settings are restored afterwards,
        even when the load fails.
    refresh : make the documents searchable before returning (tests, notebooks).

    Raises
    ------
    IntegrationError : the node is unreachable or refused the request as a whole.
    """
    es, prefix = _resolve(es, settings)
    if "ts" not in df.columns:
        raise ValueError(f"index_logs: a {log_type} frame needs a ts column (columns: {list(df.columns)[:8]})")
    indices = m.month_indices(df["ts"], f"{prefix}-zeek-{log_type}")
    columns = [str(c) for c in df.columns]
    names = [m.ecs_name(log_type, c) for c in columns]
    constants = {"event.kind": "event", "event.category": ["network"], "event.module": "zeek",
                 "event.dataset": f"zeek.{log_type}", "ecs.version": m.ECS_VERSION}
    zeek_types = {**(df.attrs.get("zeek_types") or {}), **{f.zeek: f.zeek_type for f in m.fields(log_type)}}
    meta = m.column_meta(df, names, zeek_types)
    extra = [(n, "ip" if zeek_types.get(c) == "addr" else m.es_type_for_dtype(str(df[c].dtype)))
             for c, n in zip(columns, names) if c not in m.zeek_to_ecs(log_type)]
    report = BulkReport(indices=sorted(set(indices)))
    if len(df) == 0:
        return report
    _prepare_indices(es, report.indices, log_type, meta, extra)
    values = [m.to_python(df[c]) for c in columns]
    actions = _actions(log_type, names, values, indices, constants)
    bulk_load = len(df) > 50_000 if bulk_load is None else bulk_load
    return _bulk(es, actions, report, chunk_size=chunk_size, threads=threads,
                 max_retries=_max_retries(es, settings), bulk_load=bulk_load, refresh=refresh)


def index_alerts(alerts: pd.DataFrame, *, es: Elasticsearch | None = None,
                 settings: Settings | None = None, refresh: bool = False) -> BulkReport:
    """Index alerts (``watchtower_lib.alerts.detect``) into ``<prefix>-alerts``.

    ``_id`` is the alert's ``id`` column (deterministic: model version + uid) when
    present, else a hash of the row, so re-indexing the same alerts adds nothing.
    Known columns go to ECS fields (``es_mapping.ALERT_FIELDS``), the rest to
    ``watchtower.alert.<column>``; ``explanation_json`` is stored but not indexed.
    """
    es, prefix = _resolve(es, settings)
    index = f"{prefix}-alerts"
    columns = [str(c) for c in alerts.columns]
    names = [m.ALERT_FIELDS.get(c, (f"watchtower.alert.{c}", ""))[0] for c in columns]
    meta = m.column_meta(alerts, names, {})
    extra = [(n, m.es_type_for_dtype(str(alerts[c].dtype))) for c, n in zip(columns, names)
             if c not in m.ALERT_FIELDS]
    report = BulkReport(indices=[index])
    if len(alerts) == 0:
        return report
    _prepare_indices(es, [index], "alerts", meta, extra)
    values = [m.to_python(alerts[c]) for c in columns]
    constants = {"event.kind": "alert", "event.category": ["network", "intrusion_detection"],
                 "event.module": "watchtower", "event.dataset": "watchtower.alerts",
                 "ecs.version": m.ECS_VERSION}
    ids = values[columns.index("id")] if "id" in columns else None
    actions = _actions("alerts", names, values, [index] * len(alerts), constants, ids=ids)
    return _bulk(es, actions, report, chunk_size=1000, threads=1,
                 max_retries=_max_retries(es, settings), bulk_load=False, refresh=refresh)


def sync_store(store_dir: str | Path | None = None, *, start: Any = None, end: Any = None,
               log_types: Iterable[str] | None = None, es: Elasticsearch | None = None,
               settings: Settings | None = None, threads: int = 4) -> dict[str, BulkReport]:
    """Copy the Parquet store (all of it, or ``start <= ts < end``) into Elasticsearch.

    How a run catches up after Elasticsearch was down: the store has every row,
    the ids are deterministic, so rows already indexed come back as ``existing``
    and only the missing ones are created. Phase 2 can call this after
    ``store.ingest`` instead of indexing files directly, so both paths agree on ids.

    Returns
    -------
    dict log type -> BulkReport.
    """
    from . import store

    if settings is None:
        from .config import load

        settings = load()
    es, _ = _resolve(es, settings)
    store_dir = settings.store_dir if store_dir is None else store_dir
    wanted = store.log_types(store_dir) if log_types is None else list(log_types)
    reports = {}
    for log_type in wanted:
        df = store.load(store_dir, log_type, start, end)
        reports[log_type] = index_logs(df, log_type, es=es, settings=settings, threads=threads)
    return reports


def _max_retries(es: Elasticsearch, settings: Settings | None) -> int:
    return settings.elasticsearch.max_retries if settings is not None else 3


def _prepare_indices(es: Elasticsearch, indices: list[str], log_type: str,
                     meta: dict[str, Any], extra: list[tuple[str, str]]) -> None:
    """Create the target indices (templates apply), type the columns the table does not
    know, and record the columns' dtypes in the mapping's ``_meta`` for :func:`search_df`."""
    es_mod = _elasticsearch()
    props = m.props(extra)
    with _guard(es, f"prepare {', '.join(indices[:3])}"):
        for index in indices:
            try:
                es.indices.create(index=index)
            except es_mod.BadRequestError as exc:
                if exc.error != "resource_already_exists_exception":
                    raise
            current = es.indices.get_mapping(index=index)[index]["mappings"].get("_meta", {})
            old = current.get("watchtower", {})
            merged = {"log_type": log_type,
                      "order": old.get("order") or meta["order"],
                      "columns": {**old.get("columns", {}), **meta["columns"]}}
            for column in meta["order"]:
                if column not in merged["order"]:
                    merged["order"].append(column)
            try:
                es.indices.put_mapping(index=index, properties=props, meta={"watchtower": merged})
            except es_mod.BadRequestError as exc:  # a column already typed otherwise: rows may fail
                log.warning("%s: could not add mappings (%s); conflicting documents will be counted "
                            "as failed", index, exc.message)
                es.indices.put_mapping(index=index, meta={"watchtower": merged})


def _actions(log_type: str, names: list[str], values: list[list[Any]], indices: list[str],
             constants: dict[str, Any], ids: list[Any] | None = None) -> Iterator[dict[str, Any]]:
    """Bulk ``create`` actions with deterministic ids.

    The id hashes the log type and the row's *set* values in field-name order, so
    it does not change when a frame gains an all-unset column (the store's schema
    union grows) or lists its columns in another order.
    """
    salt = f"{log_type}\x1f".encode()
    order = sorted(range(len(names)), key=names.__getitem__)
    names = [names[k] for k in order]
    values = [values[k] for k in order]
    for i, row in enumerate(zip(*values)):
        doc = {name: v for name, v in zip(names, row) if v is not None}
        if ids is not None and ids[i] is not None:
            _id = str(ids[i])
        else:
            _id = hashlib.blake2b(salt + repr(tuple(doc.items())).encode(), digest_size=15).hexdigest()
        doc.update(constants)
        yield {"_op_type": "create", "_index": indices[i], "_id": _id, "_source": doc}


def _chunks(actions: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for action in actions:
        chunk.append(action)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _bulk(es: Elasticsearch, actions: Iterator[dict[str, Any]], report: BulkReport, *, chunk_size: int,
          threads: int, max_retries: int, bulk_load: bool, refresh: bool) -> BulkReport:
    """Send ``actions`` through ``helpers.streaming_bulk`` on ``threads`` threads and count outcomes."""
    helpers = _elasticsearch().helpers
    chunks = _chunks(actions, chunk_size)
    lock = threading.Lock()

    def next_chunk() -> list[dict[str, Any]] | None:
        with lock:
            return next(chunks, None)

    def worker() -> None:
        while (chunk := next_chunk()) is not None:
            for ok, item in helpers.streaming_bulk(es, chunk, chunk_size=len(chunk), raise_on_error=False,
                                                   max_retries=max_retries, initial_backoff=1,
                                                   max_backoff=30):
                result = next(iter(item.values()))
                with lock:
                    _count(report, ok, result)

    previous = _set_index_settings(es, report.indices, BULK_LOAD_SETTINGS) if bulk_load else None
    try:
        with _guard(es, f"bulk-index into {', '.join(report.indices[:3])}"):
            if threads <= 1:
                worker()
            else:
                with ThreadPoolExecutor(threads, thread_name_prefix="wt-es-bulk") as pool:
                    for future in [pool.submit(worker) for _ in range(threads)]:
                        future.result()
    finally:
        if previous is not None:
            _set_index_settings(es, report.indices, previous)
    if refresh:
        with _guard(es, "refresh"):
            es.indices.refresh(index=",".join(report.indices))
    if report.failed:
        log.warning("Elasticsearch rejected %d of %d documents: %s (first: %s)", report.failed,
                    report.total, dict(report.errors), report.samples[:1])
    log.info("indexed into %s: %d created, %d already present, %d failed", ",".join(report.indices[:3]),
             report.created, report.existing, report.failed)
    return report


def _count(report: BulkReport, ok: bool, result: dict[str, Any]) -> None:
    if ok:
        report.created += 1
    elif result.get("status") == 409:
        report.existing += 1
    else:
        error = result.get("error") or {}
        kind = error.get("type", str(result.get("status"))) if isinstance(error, dict) else str(error)
        report.failed += 1
        report.errors[kind] += 1
        if len(report.samples) < 10:
            reason = error.get("reason") if isinstance(error, dict) else error
            cause = error.get("caused_by", {}).get("reason") if isinstance(error, dict) else None
            report.samples.append({"_id": result.get("_id"), "index": result.get("_index"),
                                   "type": kind, "reason": reason, "cause": cause})


BULK_LOAD_SETTINGS = {"refresh_interval": "-1", "translog.durability": "async"}


def _set_index_settings(es: Elasticsearch, indices: list[str], values: dict[str, Any]) -> dict[str, Any]:
    """Set index settings on ``indices``; return the previous values (None: unset) to restore."""
    target = ",".join(indices)
    with _guard(es, "change index settings"):
        got = es.indices.get_settings(index=target, flat_settings=True)
        first: dict[str, Any] = next(iter(got.values()), {})
        current = first.get("settings", {})
        previous = {key: current.get(f"index.{key}") for key in values}
        es.indices.put_settings(index=target, settings={f"index.{k}": v for k, v in values.items()})
    return previous


def index_pattern(index: str, prefix: str) -> str:
    """``"conn"`` -> ``<prefix>-zeek-conn-*``, ``"alerts"`` -> ``<prefix>-alerts``; others as given."""
    if index == "alerts":
        return f"{prefix}-alerts"
    if index.isidentifier():
        return f"{prefix}-zeek-{index}-*"
    return index


def _range(start: Any, end: Any) -> dict[str, Any] | None:
    if start is None and end is None:
        return None
    bounds: dict[str, Any] = {"format": "strict_date_optional_time_nanos"}
    for key, value in (("gte", start), ("lt", end)):
        if value is not None:
            stamp = pd.Timestamp(value)
            stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
            bounds[key] = np.datetime_as_string(stamp.tz_convert(None).to_datetime64(), unit="ns") + "Z"
    return {"range": {"@timestamp": bounds}}


def _query(query: dict[str, Any] | str | None, start: Any, end: Any) -> dict[str, Any]:
    clauses: list[dict[str, Any]] = []
    if isinstance(query, str):
        clauses.append({"query_string": {"query": query}})
    elif query is not None:
        clauses.append(query)
    window = _range(start, end)
    if window is not None:
        clauses.append(window)
    return {"bool": {"filter": clauses}} if clauses else {"match_all": {}}


def _index_meta(es: Elasticsearch, pattern: str) -> dict[str, dict[str, Any]]:
    """index -> its recorded ``_meta.watchtower`` (log type, columns, dtypes)."""
    es_mod = _elasticsearch()
    try:
        mappings = es.indices.get_mapping(index=pattern, allow_no_indices=True, ignore_unavailable=True)
    except es_mod.NotFoundError:
        return {}
    return {name: body.get("mappings", {}).get("_meta", {}).get("watchtower", {})
            for name, body in sorted(mappings.items())}


def search_df(index: str, query: dict[str, Any] | str | None = None, start: Any = None, end: Any = None,
              fields: list[str] | None = None, *, es: Elasticsearch | None = None,
              settings: Settings | None = None, page_size: int = 5000,
              keep_alive: str = "2m") -> pd.DataFrame:
    """Search Elasticsearch and return a DataFrame with Zeek's column names and dtypes.

    The same frame ``store.load`` would give for those rows, so a notebook can
    switch sources. All matches are read, page by page, through a point in time
    and ``search_after`` (consistent while indexing goes on; no 10,000 limit).
    Rows come sorted by ``ts``.

    Parameters
    ----------
    index : a log type ("conn", "dns", ...), "alerts", or an index pattern.
    query : Query DSL (a dict, on ECS field names, e.g. ``{"term": {"source.ip": "10.0.0.5"}}``)
        or a query-string (``"destination.port:443 AND network.transport:tcp"``).
    start, end : ``ts`` window, start inclusive, end exclusive (anything ``pd.Timestamp`` takes; UTC if naive).
    fields : Zeek column names to return (default: all).

    Raises
    ------
    IntegrationError : the node is down, or rejected the query (the message says why).
    """
    es, prefix = _resolve(es, settings)
    pattern = index_pattern(index, prefix)
    with _guard(es, f"search {pattern}"):
        metas = _index_meta(es, pattern)
        log_type: str = next((str(v["log_type"]) for v in metas.values() if v.get("log_type")), index)
        meta = _merged_meta(metas)
        if not metas:
            return m.frame_from_sources([], log_type, meta, fields)
        names = {name: m.reverse_names(str(v.get("log_type") or log_type), v) for name, v in metas.items()}
        source: Any = True
        if fields is not None:
            source = [m.ecs_name(log_type, c) if log_type != "alerts"
                      else m.ALERT_FIELDS.get(c, (f"watchtower.alert.{c}", ""))[0] for c in fields]
        pit = es.open_point_in_time(index=pattern, keep_alive=keep_alive)["id"]
        rows: list[dict[str, Any]] = []
        try:
            after = None
            while True:
                page = es.search(pit={"id": pit, "keep_alive": keep_alive}, query=_query(query, start, end),
                                 size=page_size, source=source, search_after=after, track_total_hits=False,
                                 sort=[{"@timestamp": {"order": "asc", "unmapped_type": "date_nanos"}},
                                       {"_shard_doc": "asc"}])
                pit = page.get("pit_id", pit)
                hits = page["hits"]["hits"]
                for hit in hits:
                    idx_names = names.get(hit["_index"], {})
                    row = {}
                    for key, value in m.flatten(hit["_source"]).items():
                        if key not in m.DERIVED:
                            row[m.column_name(log_type, key, idx_names)] = value
                    rows.append(row)
                if len(hits) < page_size:
                    break
                after = hits[-1]["sort"]
        finally:
            es.close_point_in_time(id=pit)
    log.info("read %d rows from %s", len(rows), pattern)
    return m.frame_from_sources(rows, log_type, meta, fields)


def _merged_meta(metas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    order: list[str] = []
    columns: dict[str, Any] = {}
    for meta in metas.values():
        order += [c for c in meta.get("order", []) if c not in order]
        columns.update(meta.get("columns", {}))
    return {"order": order, "columns": columns}


def weekly_host_stats(start: Any = None, end: Any = None, *, index: str = "conn",
                      query: dict[str, Any] | str | None = None, es: Elasticsearch | None = None,
                      settings: Settings | None = None, page_size: int = 1000) -> pd.DataFrame:
    """Per originating host and ISO week (Monday 00:00 UTC), computed inside Elasticsearch.

    A composite aggregation paged with ``after_key``, so a store too large for
    pandas still gives the weekly per-host table the report needs.

    Returns
    -------
    DataFrame with ``week`` (datetime64[ns, UTC]), ``id.orig_h``, ``connections``,
    ``orig_ip_bytes`` and ``resp_ip_bytes`` (sums), ``distinct_resp_h`` and
    ``distinct_resp_p`` (counts of distinct responders and ports; exact below
    3,000 per bucket, approximate above), sorted by week then host.
    """
    es, prefix = _resolve(es, settings)
    pattern = index_pattern(index, prefix)
    sources = [{"week": {"date_histogram": {"field": "@timestamp", "calendar_interval": "week"}}},
               {"host": {"terms": {"field": "source.ip"}}}]
    aggs = {"orig_ip_bytes": {"sum": {"field": "source.bytes"}},
            "resp_ip_bytes": {"sum": {"field": "destination.bytes"}},
            "distinct_resp_h": {"cardinality": {"field": "destination.ip", "precision_threshold": 3000}},
            "distinct_resp_p": {"cardinality": {"field": "destination.port", "precision_threshold": 3000}}}
    records: list[dict[str, Any]] = []
    after = None
    with _guard(es, f"aggregate {pattern} by host and week"):
        while True:
            composite: dict[str, Any] = {"size": page_size, "sources": sources}
            if after is not None:
                composite["after"] = after
            resp = es.search(index=pattern, size=0, query=_query(query, start, end),
                             aggs={"hosts": {"composite": composite, "aggs": aggs}},
                             allow_no_indices=True, ignore_unavailable=True)
            agg = resp.get("aggregations", {}).get("hosts", {"buckets": []})
            for b in agg["buckets"]:
                records.append({"week": b["key"]["week"], "id.orig_h": b["key"]["host"],
                                "connections": b["doc_count"],
                                **{k: int(round(b[k]["value"] or 0)) for k in aggs}})
            after = agg.get("after_key")
            if not agg["buckets"] or after is None:
                break
    frame = pd.DataFrame.from_records(records, columns=["week", "id.orig_h", "connections", *aggs])
    frame["week"] = pd.to_datetime(frame["week"].astype("int64"), unit="ms", utc=True).astype(
        "datetime64[ns, UTC]")
    frame["id.orig_h"] = frame["id.orig_h"].astype("string")
    for column in ["connections", *aggs]:
        frame[column] = frame[column].astype("Int64")
    return frame.sort_values(["week", "id.orig_h"], ignore_index=True)


__all__ = ["BulkReport", "client", "index_alerts", "index_logs", "index_pattern", "install_templates",
           "ping", "search_df", "sync_store", "url_of", "weekly_host_stats"]

