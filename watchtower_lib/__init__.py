"""Watch Tower: Zeek logs to detections, alerts and weekly reports.

``import watchtower_lib as wt`` is all a notebook needs. Submodules load on
first use (``wt.zeek``, ``wt.store`` ...), so importing the package does no work.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = {
    "config", "errors", "zeek", "labels", "store", "collect", "features", "models",
    "alerts", "detection", "notify", "es", "behaviour", "report", "explore", "runner", "schedule",
    "render", "alert_store",
}
_NAMES = {
    "read_log": "zeek",
    "read_arrow": "zeek",
    "iter_batches": "zeek",
    "read_labelled": "labels",
    "ZeekParseError": "errors",
    "WatchtowerError": "errors",
    "ConfigError": "errors",
    "load_config": "config",
}

if TYPE_CHECKING:  # pragma: no cover
    from .config import load as load_config
    from .errors import ConfigError, WatchtowerError, ZeekParseError
    from .labels import read_labelled
    from .zeek import iter_batches, read_arrow, read_log


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        module = importlib.import_module(f".{_NAMES[name]}", __name__)
        return getattr(module, "load" if name == "load_config" else name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES | set(_NAMES))


__all__ = ["__version__", *sorted(_NAMES)]
