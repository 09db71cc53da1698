"""The one configuration of Watch Tower: a YAML file plus ``WATCHTOWER_*`` variables.

Why one place: every phase (collect, ingest, train, detect, report) reads its
paths and services from here, so a scheduled run and an analyst's notebook see
the same store. With no file at all the embedded defaults run everything on
local files (a Parquet store, a SQLite alert store); Elasticsearch, remote
sensors and notifications switch on only when configured.

Precedence (highest first): ``WATCHTOWER_*`` environment variables, the YAML
file, the defaults below. Relative paths in a file are relative to that file's
folder; without a file, to the current directory.

Environment variables: ``WATCHTOWER_CONFIG`` names the file;
``WATCHTOWER_<KEY>`` sets a top-level key (``WATCHTOWER_STORE_DIR=/data/store``);
``WATCHTOWER_<SECTION>__<KEY>`` sets a key of a section
(``WATCHTOWER_DETECTION__TARGET_ALERT_RATE=0.005``); ``WATCHTOWER_ES_URL`` is
short for ``WATCHTOWER_ELASTICSEARCH__URL``.

Secrets never live in the file: passwords and API keys are read from the
environment variable the file *names* (``password_env: SENSOR1_PASSWORD``).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

ENV_PREFIX = "WATCHTOWER_"
_ALIASES = {"WATCHTOWER_ES_URL": ("elasticsearch", "url")}
_NOT_KEYS = {"WATCHTOWER_CONFIG"} | {  # test switches and tool variables, not settings
    "WATCHTOWER_SHARED_DATA", "WATCHTOWER_CHROMIUM",
    # scripts/es-node
    "WATCHTOWER_ES_VERSION", "WATCHTOWER_ES_ZIP", "WATCHTOWER_ES_STATE", "WATCHTOWER_ES_USER",
    "WATCHTOWER_ES_HEAP", "WATCHTOWER_ES_TIMEOUT", "WATCHTOWER_ES_RUNDIR", "WATCHTOWER_ES_JAVA_OPTS",
}
# Secrets live in variables the config names (``password_env``, ``api_key_env``), often with our prefix.
_SECRET_SUFFIXES = ("_PASSWORD", "_API_KEY", "_TOKEN", "_SECRET")


@dataclass(frozen=True)
class SensorConfig:
    """One Zeek sensor to collect logs from (``kind: ssh``) or a local folder (``kind: local``)."""

    name: str
    kind: Literal["ssh", "local"] = "ssh"
    host: str | None = None
    port: int = 22
    user: str | None = None
    key_file: Path | None = None  # None: use the SSH agent / default keys
    password_env: str | None = None  # name of the variable holding the password, never the password
    remote_dir: str = "/opt/zeek/logs"
    patterns: tuple[str, ...] = ("*.log", "*.log.gz")
    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts
    trust_on_first_use: bool = False
    connect_timeout: float = 10.0
    transfer_timeout: float = 60.0  # seconds without progress before a transfer is abandoned
    retries: int = 3
    parallel_files: int = 6  # files fetched at once per ssh sensor (SFTP channels on one connection)
    processes: int = 2  # for large collections: connections in processes of their own (at most one per core)

    def password(self) -> str | None:
        """The password from the environment, read only when needed (never stored or logged)."""
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(
                f"sensor {self.name!r}: password_env names {self.password_env!r} "
                f"but that environment variable is not set"
            )
        return value


@dataclass(frozen=True)
class ElasticsearchConfig:
    """Where logs and alerts are also indexed; off while ``url`` is unset."""

    url: str | None = None
    api_key_env: str | None = None
    username: str | None = None
    password_env: str | None = None
    ca_certs: Path | None = None
    verify_certs: bool = True
    request_timeout: float = 30.0
    max_retries: int = 3
    index_prefix: str = "watchtower"

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True)
class DetectionConfig:
    """Thresholds and retraining of the detection phases."""

    target_alert_rate: float = 0.01  # share of connections the isolation forest may alert on
    window_days: int = 7  # how much of the store the unsupervised model retrains on
    keep_models: int = 5  # model versions kept on disk
    # probability of malicious from which the forest alerts; None (the default): the threshold the
    # supervised model card records, calibrated to a 1% false-positive rate on held-out captures
    supervised_threshold: float | None = None
    incident_window_minutes: int = 60  # alerts of one source, destination and kind grouped


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    min_interval_seconds: float = 60.0  # rate limit between two posts
    min_severity: str = "medium"
    timeout: float = 10.0


@dataclass(frozen=True)
class EmailConfig:
    host: str
    sender: str
    recipients: tuple[str, ...]
    port: int = 25
    username: str | None = None
    password_env: str | None = None
    starttls: bool = False
    min_interval_seconds: float = 300.0
    min_severity: str = "high"
    timeout: float = 10.0


@dataclass(frozen=True)
class NotificationsConfig:
    webhook: WebhookConfig | None = None
    email: EmailConfig | None = None


@dataclass(frozen=True)
class ScheduleJob:
    """A pipeline run on a cron expression, e.g. ``{name: detect, phases: "2-6", cron: "0 * * * *"}``."""

    name: str
    phases: str
    cron: str


@dataclass(frozen=True)
class Settings:
    """Everything a phase needs to know about where things are and what is switched on."""

    data_dir: Path = Path("data")  # sample/input logs ingested by `make demo`
    raw_dir: Path = Path("raw")  # where collected logs land: raw/<sensor>/...
    store_dir: Path = Path("store")  # the Parquet store
    models_dir: Path = Path("models")
    alerts_db: Path = Path("alerts.sqlite")
    runs_dir: Path = Path("runs")  # executed notebooks and run.json
    reports_dir: Path = Path("reports")
    internal_networks: tuple[str, ...] = (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",
    )
    sensors: tuple[SensorConfig, ...] = ()
    elasticsearch: ElasticsearchConfig = field(default_factory=ElasticsearchConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    notifications: NotificationsConfig = field(default_factory=NotificationsConfig)
    schedule: tuple[ScheduleJob, ...] = ()
    config_path: Path | None = None  # the file these came from, if any

    def sensor(self, name: str) -> SensorConfig:
        for sensor in self.sensors:
            if sensor.name == name:
                return sensor
        known = ", ".join(s.name for s in self.sensors) or "none configured"
        raise ConfigError(f"no sensor named {name!r} (sensors: {known})")


def load(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Read the configuration: ``path`` (or ``$WATCHTOWER_CONFIG``), then the environment.

    Parameters
    ----------
    path : a YAML file; None means ``$WATCHTOWER_CONFIG`` if set, else defaults only.
    env : the environment to read ``WATCHTOWER_*`` from (default ``os.environ``).

    Raises
    ------
    ConfigError
        The file is missing or not YAML, a key is unknown (with the closest
        known key), or a value has the wrong type; the message names the key.
    """
    env = os.environ if env is None else env
    if path is None and env.get("WATCHTOWER_CONFIG"):
        path = env["WATCHTOWER_CONFIG"]
    data: dict[str, Any] = {}
    base = Path.cwd()
    source = "defaults"
    if path is not None:
        config_path = Path(path).expanduser()
        data = _read_yaml(config_path)
        base = config_path.resolve().parent
        source = str(config_path)
    _apply_env(data, env)
    settings = _build(Settings, data, where=source, key_prefix="")
    settings = _resolve_paths(settings, base)
    if path is not None:
        settings = dataclasses.replace(settings, config_path=Path(path).expanduser().resolve())
    _check(settings, source)
    return settings


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # deferred: importing the package does no work

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (pass --config FILE or set WATCHTOWER_CONFIG)")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(loaded).__name__}")
    return loaded


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    hints = typing.get_type_hints(Settings)
    section_names = {name for name, tp in hints.items() if dataclasses.is_dataclass(tp)}
    for name, value in env.items():
        if (not name.startswith(ENV_PREFIX) or name in _NOT_KEYS or name.startswith("WATCHTOWER_REQUIRE_")
                or name.endswith(_SECRET_SUFFIXES)):
            continue
        if name in _ALIASES:
            section, key = _ALIASES[name]
            data[section] = {**(data.get(section) or {}), key: value}
            continue
        rest = name[len(ENV_PREFIX):].lower()
        if "__" in rest:
            section, key = rest.split("__", 1)
            if section not in section_names:
                raise ConfigError(f"environment variable {name}: {section!r} is not a settings section "
                                  f"(sections: {', '.join(sorted(section_names))})")
            data[section] = {**(data.get(section) or {}), key: value}
        else:
            data[rest] = value


def _build(cls: type, data: Any, *, where: str, key_prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types with messages that name them."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: {key_prefix.rstrip('.') or 'settings'} must be a mapping, "
                          f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields or k == "config_path"]
    if unknown:
        key = str(unknown[0])
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(sorted(fields))})"
        raise ConfigError(f"{where}: unknown setting {key_prefix}{key}{hint}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, where=where, key=f"{key_prefix}{name}")
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: {key_prefix}{missing[0]} is required")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, *, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where=where, key=key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):  # from the environment: comma-separated
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        return tuple(_coerce(args[0], v, where=where, key=f"{key}[{i}]") for i, v in enumerate(value))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, where=where, key_prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    if tp in (int, float):
        try:
            if isinstance(value, bool):
                raise ValueError
            number = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key} must be a {'whole number' if tp is int else 'number'}, "
                              f"got {value!r}") from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: {key} must be a whole number, got {value!r}")
        return number
    if tp is Path:
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{where}: {key} must be a path, got {value!r}")
        return Path(value).expanduser()
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be text, got {value!r}")
        return str(value)
    return value


def _resolve_paths(obj: Any, base: Path) -> Any:
    """Make relative paths relative to ``base`` (the config file's folder or the cwd)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            new = _resolve_paths(value, base)
            if new is not value:
                changes[f.name] = new
        return dataclasses.replace(obj, **changes) if changes else obj
    if isinstance(obj, Path):
        return obj if obj.is_absolute() else base / obj
    if isinstance(obj, tuple) and obj and dataclasses.is_dataclass(obj[0]):
        return tuple(_resolve_paths(item, base) for item in obj)
    return obj


def _check(settings: Settings, source: str) -> None:
    names = [s.name for s in settings.sensors]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{source}: sensor names must be unique; repeated: {', '.join(duplicates)}")
    for sensor in settings.sensors:
        if "/" in sensor.name or sensor.name in ("", ".", ".."):
            raise ConfigError(f"{source}: sensor name {sensor.name!r} must be a plain folder name")
        if sensor.kind == "ssh" and not sensor.host:
            raise ConfigError(f"{source}: sensor {sensor.name!r} is kind ssh and needs a host")
        if not 0 < sensor.port < 65536:
            raise ConfigError(f"{source}: sensor {sensor.name!r}: port {sensor.port} is not 1-65535")
        for key in ("parallel_files", "processes"):
            if not 1 <= getattr(sensor, key) <= 64:
                raise ConfigError(f"{source}: sensor {sensor.name!r}: {key} must be 1-64, got {getattr(sensor, key)}")
    rate = settings.detection.target_alert_rate
    if not 0 < rate < 1:
        raise ConfigError(f"{source}: detection.target_alert_rate must be between 0 and 1, got {rate}")
    if settings.detection.keep_models < 1:
        raise ConfigError(f"{source}: detection.keep_models must be at least 1")
