"""Every error Watch Tower raises on purpose, in one place.

Each error carries the context an analyst needs to act without re-running:
the file, the line, the field, the value, and where possible how to fix it.
"""
from __future__ import annotations

from pathlib import Path


class WatchtowerError(Exception):
    """Root of all Watch Tower errors: catch this to catch ours and nothing else."""


class ZeekParseError(WatchtowerError, ValueError):
    """A Zeek log could not be read as Zeek.

    Attributes
    ----------
    path : the file being read.
    line : 1-based line number in the (decompressed) file, when known.
    field : the column name, when the problem is one value.
    value : the offending text (shortened), when the problem is one value.
    expected : what the reader expected instead.
    """

    def __init__(
        self,
        path: str | Path,
        message: str,
        *,
        line: int | None = None,
        field: str | None = None,
        value: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.value = value
        self.expected = expected
        self.message = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        parts = [f"{where}: {self.message}"]
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        if self.value is not None:
            shown = self.value if len(self.value) <= 80 else self.value[:77] + "..."
            parts.append(f"value {shown!r}")
        if self.expected is not None:
            parts.append(f"expected {self.expected}")
        return "; ".join(parts)

    def __reduce__(self):  # keep the context when pickled (multiprocessing, papermill)
        return (
            _rebuild_parse_error,
            (self.path, self.message, self.line, self.field, self.value, self.expected),
        )


def _rebuild_parse_error(path, message, line, field, value, expected) -> ZeekParseError:
    return ZeekParseError(path, message, line=line, field=field, value=value, expected=expected)


class ZeekSchemaConflict(ZeekParseError):
    """Two header blocks of one file give one column name two different Zeek types."""


class ConfigError(WatchtowerError, ValueError):
    """The configuration file or a WATCHTOWER_* variable is invalid; the message names the key."""


class StoreError(WatchtowerError):
    """The Parquet store is missing, unreadable or inconsistent."""


class IntegrationError(WatchtowerError):
    """An external service (SSH sensor, Elasticsearch, SMTP, webhook) failed or is unreachable."""


class MissingDependencyError(WatchtowerError, ImportError):
    """An optional integration is used but its extra is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package} is needed for this feature: pip install 'watchtower-zeek[{extra}]'"
        )


class ModelError(WatchtowerError):
    """A model file is missing, incompatible (features, library versions) or unsafe to load."""


class PhaseError(WatchtowerError):
    """A pipeline phase (an executed notebook) failed; names the notebook and the failing cell.

    Attributes
    ----------
    phase : the phase name (``03_features``).
    notebook : the executed notebook, with the traceback in the failing cell's output.
    cell_index : 0-based index of the failing cell in that notebook, when known.
    ename, evalue : the exception's type name and message inside the kernel.
    """

    def __init__(self, phase: str, notebook: str | Path, message: str, *, cell_index: int | None = None,
                 ename: str | None = None, evalue: str | None = None) -> None:
        self.phase = phase
        self.notebook = str(notebook)
        self.cell_index = cell_index
        self.ename = ename
        self.evalue = evalue
        super().__init__(message)

    def __reduce__(self):  # keep the context when pickled
        return (_rebuild_phase_error, (self.phase, self.notebook, str(self), self.cell_index,
                                       self.ename, self.evalue))


def _rebuild_phase_error(phase, notebook, message, cell_index, ename, evalue) -> PhaseError:
    return PhaseError(phase, notebook, message, cell_index=cell_index, ename=ename, evalue=evalue)
