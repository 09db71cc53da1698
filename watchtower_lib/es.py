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
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from . import es_mapping as m
from ._atomic import write_text_atomic
from .errors import ConfigError, IntegrationError, MissingDependencyError, StoreError

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


def _orjson():
    try:
        import orjson
    except ImportError:
        raise MissingDependencyError("orjson", "es") from None
    return orjson


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
    _orjson()
    from elastic_transport import OrjsonSerializer

    # why: serialising bulk bodies with the json module cost the client about 10 s per million conn
    # documents, orjson 1.4 s; on a small machine the client shares the cores with the node
    return es_mod.Elasticsearch(cfg.url, serializers={"application/json": OrjsonSerializer()}, **kwargs)


def _secret(var: str, key: str) -> str:
    """The secret in ``$var``, read only here: the config names the variable so that no key or
    password sits in a file; the error names the variable, never a value."""
    value = os.environ.get(var)
    if value is None:
        what = "API key" if key == "api_key_env" else "password"
        raise ConfigError(f"elasticsearch.{key} names {var!r} but that environment variable is not set: "
                          f"export {var}=<the {what}> in the environment that runs watchtower, or remove "
                          f"elasticsearch.{key} from the config")
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
        # str() of a transport error without retries is only "TLS error"; .message keeps the cause
        detail = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
        if isinstance(exc, es_mod.SSLError):
            raise IntegrationError(f"Elasticsearch at {url_of(es)} failed the TLS handshake while trying to "
                                   f"{what} ({detail}); if its certificate is signed by your own CA, set "
                                   f"elasticsearch.ca_certs to that CA's PEM file, and check that the URL's "
                                   f"host is the one the certificate names") from exc
        raise IntegrationError(f"Elasticsearch at {url_of(es)} is unreachable while trying to {what} "
                               f"({detail}); {HOW_TO_START}") from exc


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
    with _TEMPLATES_LOCK:
        _TEMPLATES_DONE.add((url_of(es), prefix))
    return names


_TEMPLATES_DONE: set[tuple[str, str]] = set()  # (node URL, index prefix) installed by this process
_TEMPLATES_LOCK = threading.Lock()


def _ensure_templates(es: Elasticsearch, settings: Settings | None, prefix: str) -> None:
    """Install the templates once per process and target before the first index is created, so a
    fresh cluster never gives the pipeline's indices dynamic mappings (``source.ip`` as text)."""
    if (url_of(es), prefix) in _TEMPLATES_DONE:
        return
    install_templates(es, settings=settings)


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
               bulk_load: bool | None = None, refresh: bool = False, sensor: str | None = None) -> BulkReport:
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
    sensor : tag every row with this ``_sensor`` (replacing the frame's own), exactly as
        ``store.ingest`` does. Why: the sensor is part of the row and so of its ``_id``; a
        file indexed with the sensor name it was (or will be) ingested under gets the same
        ids as the same rows synced from the store, so doing both adds nothing. The sensor
        is kept in the id (rather than left out of it) so that one connection seen by two
        sensors stays two documents, as it is two rows in the store. None: the frame as it
        is (store frames already carry ``_sensor``).

    Raises
    ------
    IntegrationError : the node is unreachable or refused the request as a whole.
    """
    es, prefix = _resolve(es, settings)
    if "ts" not in df.columns:
        raise ValueError(f"index_logs: a {log_type} frame needs a ts column (columns: {list(df.columns)[:8]})")
    if sensor is not None:
        df = with_sensor(df, sensor)
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
    _ensure_templates(es, settings, prefix)
    _prepare_indices(es, report.indices, log_type, meta, extra)
    values = [m.to_python(df[c]) for c in columns]
    actions = _actions(log_type, names, values, indices, constants)
    bulk_load = len(df) > 50_000 if bulk_load is None else bulk_load
    return _bulk(es, actions, report, chunk_size=chunk_size, threads=threads,
                 max_retries=_max_retries(es, settings), bulk_load=bulk_load, refresh=refresh)


def with_sensor(df: pd.DataFrame, sensor: str) -> pd.DataFrame:
    """``df`` with the store's ``_sensor`` column set to ``sensor``: dropped if present and appended
    last, as ``store.ingest`` writes it, so file and store rows hash to the same ``_id``."""
    from ._store_write import SENSOR_COLUMN

    out = df.drop(columns=[SENSOR_COLUMN], errors="ignore")
    out[SENSOR_COLUMN] = pd.array([sensor] * len(out), dtype="string")
    out.attrs = dict(df.attrs)
    return out


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
    _ensure_templates(es, settings, prefix)
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


# ------------------------------------------------------------------ catching up from the store
LEDGER_NAME = "_es_synced.json"
LEDGER_FLUSH_PARTS = 64  # acknowledged parts between ledger writes during one sync


@dataclass
class SyncReport:
    """What :func:`sync_pending` did for one target (node URL + index prefix).

    ``ok`` is False when Elasticsearch could not be reached or refused the load;
    ``message`` then says so, names the URL and what is still to index, and that
    the next run catches up. ``reports`` holds one BulkReport per log type sent.
    """

    url: str = ""
    prefix: str = ""
    ok: bool = True
    enabled: bool = True
    parts_done: int = 0  # acknowledged by this call
    parts_skipped: int = 0  # already acknowledged by an earlier call
    parts_failed: int = 0  # sent, but Elasticsearch rejected some of their rows: sent again next run
    parts_pending: int = 0  # not sent because the node was unreachable
    rows_pending: int = 0
    pending_by_log_type: dict[str, int] = field(default_factory=dict)  # rows not indexed yet
    reports: dict[str, BulkReport] = field(default_factory=dict)
    error: str | None = None
    problems: list[str] = field(default_factory=list)  # parts that vanished or could not be read

    @property
    def created(self) -> int:
        return sum(r.created for r in self.reports.values())

    @property
    def existing(self) -> int:
        return sum(r.existing for r in self.reports.values())

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.reports.values())

    @property
    def rows_sent(self) -> int:
        return sum(r.total for r in self.reports.values())

    @property
    def message(self) -> str:
        if not self.enabled:
            return "Elasticsearch is not configured (elasticsearch.url is unset): nothing indexed."
        done = (f"{self.parts_done} new store part(s) indexed into {self.url} (prefix {self.prefix}): "
                f"{self.created:,} documents created, {self.existing:,} already there, "
                f"{self.failed:,} rejected; {self.parts_skipped} part(s) were already indexed")
        if not self.ok:
            pending = ", ".join(f"{t} {n:,}" for t, n in sorted(self.pending_by_log_type.items()))
            before = f" Before the failure: {done}." if self.parts_done or self.parts_failed else ""
            return (f"Elasticsearch at {self.url} is unreachable or refused the load, so "
                    f"{self.rows_pending:,} rows in {self.parts_pending} store part(s) were not indexed "
                    f"({pending or 'nothing'}). The local store has them all and the next run catches up."
                    f"{before} Error: {self.error}")
        text = done + "."
        if self.parts_failed:
            text += (f" {self.parts_failed} part(s) had rejected rows and stay pending "
                     f"(first: {self._first_sample()}).")
        if self.problems:
            text += f" {len(self.problems)} part(s) skipped: {self.problems[0]}"
        return text

    def pending(self, log_type: str, rows: int) -> None:
        """Count one part left for the next run."""
        self.parts_pending += 1
        self.rows_pending += rows
        self.pending_by_log_type[log_type] = self.pending_by_log_type.get(log_type, 0) + rows

    def _first_sample(self) -> Any:
        return next((r.samples[0] for r in self.reports.values() if r.samples), None)


def ledger_key(url: str, prefix: str) -> str:
    """The ledger's key for one target: the node URL (no trailing slash) and the index prefix."""
    return f"{url.rstrip('/')}|{prefix}"


def read_ledger(store_dir: str | Path) -> dict[str, Any]:
    """``<store>/_es_synced.json``: per target, the store parts Elasticsearch acknowledged."""
    path = Path(store_dir) / LEDGER_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"version": 1, "targets": {}}
    except (OSError, ValueError) as exc:  # a corrupt ledger only costs a full (idempotent) re-send
        log.warning("%s unreadable (%s): every part is sent again; ids make that harmless", path, exc)
        return {"version": 1, "targets": {}}
    data.setdefault("targets", {})
    return data


def _write_ledger(store_dir: Path, key: str, done: set[str]) -> None:
    """Record ``done`` for ``key`` atomically (``_atomic.write_text_atomic``); other targets kept."""
    data = read_ledger(store_dir)
    data["targets"][key] = {"parts": sorted(done),
                            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_text_atomic(store_dir / LEDGER_NAME, json.dumps(data, indent=1))


def _read_part(store: Path, part: Any, schema: pa.Schema, log_type: str) -> pd.DataFrame:
    """One Parquet part as ``store.load`` would give its rows (the log type's union schema)."""
    import pyarrow.dataset as ds

    from ._store_read import _to_pandas

    table = ds.dataset([str(store / part.relpath)], schema=schema, format="parquet").to_table()
    if "ts" in schema.names and pa.types.is_timestamp(schema.field("ts").type):
        table = table.sort_by([("ts", "ascending")])
    return _to_pandas(table, log_type)


def sync_pending(settings: Settings | None = None, *, store_dir: str | Path | None = None,
                 es: Elasticsearch | None = None, log_types: Iterable[str] | None = None,
                 threads: int = 4, refresh: bool = True) -> SyncReport:
    """Index the store's Parquet parts this target has not acknowledged yet; never raises for a down node.

    Phase 2 calls it after ingesting. A ledger in the store (``_es_synced.json``,
    keyed by node URL + index prefix) lists the parts Elasticsearch has taken
    without rejecting a row; parts are immutable and named by their source's
    SHA-256, so only new parts are read and sent: the cost follows what is new,
    not the store's size. A part is marked only when its bulk load reported no
    failures; parts whose source was re-ingested (gone from the manifest) are
    dropped from the ledger. Templates are installed first (once per process).

    When the node is unreachable or refuses the load, the ledger keeps what was
    acknowledged before, the report's ``message`` says what was not indexed, and
    the next call catches up (document ids are deterministic: nothing doubles).

    Parameters
    ----------
    settings : default ``config.load()``; ``elasticsearch.url`` unset gives an empty report.
    store_dir : default ``settings.store_dir``.
    log_types : default every type of :data:`es_mapping.LOG_TYPES` the store has.
    refresh : make what was created searchable before returning (a later phase reads it).
    """
    from ._manifest import open_manifest
    from ._store_read import unify_schemas
    from . import store as store_mod

    if settings is None:
        from .config import load

        settings = load()
    prefix = settings.elasticsearch.index_prefix
    if es is None and not settings.elasticsearch.enabled:
        return SyncReport(prefix=prefix, enabled=False)
    es, prefix = _resolve(es, settings)
    store = Path(settings.store_dir if store_dir is None else store_dir)
    url = url_of(es)
    report = SyncReport(url=url, prefix=prefix)
    key = ledger_key(url, prefix)
    try:
        present = store_mod.log_types(store)
    except StoreError as exc:  # nothing ingested yet: nothing to send
        log.info("nothing to index: %s", exc)
        return report
    wanted = [t for t in (m.LOG_TYPES if log_types is None else log_types) if t in present]
    with open_manifest(store) as manifest:
        parts = {t: manifest.parts(t) for t in wanted}
    all_parts = {p.relpath for ps in parts.values() for p in ps}
    acknowledged = set(read_ledger(store)["targets"].get(key, {}).get("parts", []))
    done = acknowledged & all_parts  # parts replaced by a re-ingest drop out
    changed = done != acknowledged
    todo = [(t, p) for t in wanted for p in parts[t] if p.relpath not in done]
    report.parts_skipped = len(all_parts) - len(todo)
    schemas: dict[str, pa.Schema] = {}
    try:
        for i, (log_type, part) in enumerate(todo):
            if report.error is not None:
                report.pending(log_type, part.rows)
                continue
            try:
                if log_type not in schemas:  # the union store.load reads the whole type with
                    schemas[log_type] = unify_schemas([(f"{q.relpath} (from {q.source_path})", q.schema)
                                                       for q in parts[log_type]])
                df = _read_part(store, part, schemas[log_type], log_type)
            except (OSError, pa.ArrowException, StoreError) as exc:  # re-ingested meanwhile: next run
                report.problems.append(f"{part.relpath}: {exc}")
                log.warning("skipped %s: %s", part.relpath, exc)
                continue
            try:
                bulk = index_logs(df, log_type, es=es, settings=settings, threads=threads)
            except IntegrationError as exc:
                report.ok, report.error = False, str(exc)
                report.pending(log_type, part.rows)
                log.warning("Elasticsearch indexing stopped at %s (%d parts left): %s", part.relpath,
                            len(todo) - i, exc)
                continue
            _merge(report.reports.setdefault(log_type, BulkReport()), bulk)
            if bulk.failed:
                report.parts_failed += 1
            else:
                done.add(part.relpath)
                report.parts_done += 1
                changed = True
                if report.parts_done % LEDGER_FLUSH_PARTS == 0:  # a long first sync keeps its progress
                    _write_ledger(store, key, done)
                    changed = False
    finally:
        if changed:
            _write_ledger(store, key, done)
    if refresh and report.created:
        try:  # searchable now, not at the next refresh_interval: phase 7 may read them in the same run
            with _guard(es, "refresh"):
                es.indices.refresh(index=",".join(sorted({i for r in report.reports.values() for i in r.indices})))
        except IntegrationError as exc:
            log.warning("indexed, but the refresh failed (the documents appear within seconds): %s", exc)
    (log.info if report.ok else log.warning)("%s", report.message)
    return report


def _merge(into: BulkReport, more: BulkReport) -> None:
    into.created += more.created
    into.existing += more.existing
    into.failed += more.failed
    into.errors.update(more.errors)
    into.samples += more.samples[: max(0, 10 - len(into.samples))]
    into.indices = sorted(set(into.indices) | set(more.indices))


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
    union grows) or lists its columns in another order. The row is encoded for the
    hash with orjson (sorted field names, the row's own values), which is 7x cheaper
    than ``repr`` and gives the same bytes wherever the ``[es]`` extra is installed.
    """
    dumps = _orjson().dumps
    salt = f"{log_type}\x1f".encode()
    order = sorted(range(len(names)), key=names.__getitem__)
    names = [names[k] for k in order]
    values = [values[k] for k in order]
    for i, row in enumerate(zip(*values)):
        doc = {name: v for name, v in zip(names, row) if v is not None}
        if ids is not None and ids[i] is not None:
            _id = str(ids[i])
        else:
            _id = hashlib.blake2b(salt + dumps(doc), digest_size=15).hexdigest()
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


HOST_STATS = ["connections", "orig_ip_bytes", "resp_ip_bytes", "distinct_resp_h", "distinct_resp_p"]


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
    return _host_aggregation(start, end, by_week=True, index=index, query=query, es=es, settings=settings,
                             page_size=page_size)


def _host_aggregation(start: Any, end: Any, *, by_week: bool, index: str, query: dict[str, Any] | str | None,
                      es: Elasticsearch | None, settings: Settings | None, page_size: int) -> pd.DataFrame:
    es, prefix = _resolve(es, settings)
    pattern = index_pattern(index, prefix)
    sources = [{"host": {"terms": {"field": "source.ip"}}}]
    if by_week:
        sources.insert(0, {"week": {"date_histogram": {"field": "@timestamp", "calendar_interval": "week"}}})
    aggs = {"orig_ip_bytes": {"sum": {"field": "source.bytes"}},
            "resp_ip_bytes": {"sum": {"field": "destination.bytes"}},
            "distinct_resp_h": {"cardinality": {"field": "destination.ip", "precision_threshold": 3000}},
            "distinct_resp_p": {"cardinality": {"field": "destination.port", "precision_threshold": 3000}}}
    records: list[dict[str, Any]] = []
    after = None
    with _guard(es, f"aggregate {pattern} by host{' and week' if by_week else ''}"):
        while True:
            composite: dict[str, Any] = {"size": page_size, "sources": sources}
            if after is not None:
                composite["after"] = after
            resp = es.search(index=pattern, size=0, query=_query(query, start, end),
                             aggs={"hosts": {"composite": composite, "aggs": aggs}},
                             allow_no_indices=True, ignore_unavailable=True)
            agg = resp.get("aggregations", {}).get("hosts", {"buckets": []})
            for b in agg["buckets"]:
                records.append({**({"week": b["key"]["week"]} if by_week else {}), "id.orig_h": b["key"]["host"],
                                "connections": b["doc_count"],
                                **{k: int(round(b[k]["value"] or 0)) for k in aggs}})
            after = agg.get("after_key")
            if not agg["buckets"] or after is None:
                break
    keys = ["week", "id.orig_h"] if by_week else ["id.orig_h"]
    frame = pd.DataFrame.from_records(records, columns=[*keys, *HOST_STATS])
    if by_week:
        frame["week"] = pd.to_datetime(frame["week"].astype("int64"), unit="ms", utc=True).astype(
            "datetime64[ns, UTC]")
    frame["id.orig_h"] = frame["id.orig_h"].astype("string")
    for column in HOST_STATS:
        frame[column] = frame[column].astype("Int64")
    return frame.sort_values(keys, ignore_index=True)


# ------------------------------------------------------------------ the report's source
SOURCES = ("store", "elasticsearch")


def _check_source(source: str, settings: Settings) -> None:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "elasticsearch" and not settings.elasticsearch.enabled:
        raise ConfigError("source='elasticsearch' but elasticsearch.url is not set: set it in the config or "
                          "WATCHTOWER_ES_URL, or read the local store (source='store')")


def load_rows(settings: Settings, log_type: str, start: Any = None, end: Any = None, *,
              source: str = "store", es: Elasticsearch | None = None) -> pd.DataFrame:
    """Rows of one log type with ``start <= ts < end`` from the Parquet store or from Elasticsearch.

    Both give the reader's column names and dtypes, sorted by ``ts``, so a phase
    (the weekly report) switches source with one parameter. Elasticsearch holds
    rows that are identical in every column once (one ``_id``); the store keeps each.

    Raises
    ------
    ConfigError : ``source="elasticsearch"`` without ``elasticsearch.url``.
    IntegrationError : the node is down (the message gives its URL and how to start one).
    """
    _check_source(source, settings)
    if source == "store":
        from . import store

        return store.load(settings.store_dir, log_type, start, end)
    return search_df(log_type, start=start, end=end, es=es, settings=settings)


def host_stats(settings: Settings, start: Any = None, end: Any = None, *, source: str = "store",
               es: Elasticsearch | None = None, page_size: int = 1000) -> pd.DataFrame:
    """Per originating host over ``start <= ts < end``: the weekly report's host table.

    With ``source="elasticsearch"`` it is a composite aggregation inside the
    cluster (nothing but the buckets comes back); with ``"store"`` pandas computes
    the same figures from the store's conn rows. Columns: ``id.orig_h`` and
    :data:`HOST_STATS` (Int64), sorted by connections (most first), then host.
    Distinct counts from Elasticsearch are exact below 3,000 per host.
    """
    _check_source(source, settings)
    if source == "elasticsearch":
        frame = _host_aggregation(start, end, by_week=False, index="conn", query=None, es=es,
                                  settings=settings, page_size=page_size)
    else:
        from . import store

        columns = ["ts", "id.orig_h", "id.resp_h", "id.resp_p", "orig_ip_bytes", "resp_ip_bytes"]
        conn = store.load(settings.store_dir, "conn", start, end, columns=columns)
        conn = conn.dropna(subset=["id.orig_h"])
        hosts = conn["id.orig_h"].astype(str)
        grouped = conn.groupby(hosts, sort=True)
        frame = pd.DataFrame({
            "connections": grouped.size(),
            "orig_ip_bytes": grouped["orig_ip_bytes"].sum(),
            "resp_ip_bytes": grouped["resp_ip_bytes"].sum(),
            "distinct_resp_h": grouped["id.resp_h"].nunique(),
            "distinct_resp_p": grouped["id.resp_p"].nunique(),
        }).rename_axis("id.orig_h").reset_index()
        frame["id.orig_h"] = frame["id.orig_h"].astype("string")
        for column in HOST_STATS:
            frame[column] = frame[column].astype("Int64")
    return frame.sort_values(["connections", "id.orig_h"], ascending=[False, True], ignore_index=True)


__all__ = ["HOST_STATS", "LEDGER_NAME", "BulkReport", "SyncReport", "client", "host_stats", "index_alerts",
           "index_logs", "index_pattern", "install_templates", "ledger_key", "load_rows", "ping", "read_ledger",
           "search_df", "sync_pending", "sync_store", "url_of", "weekly_host_stats", "with_sensor"]

