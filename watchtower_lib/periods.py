"""Periods and phase plumbing: the half-open UTC interval a run works on, the rule that picks it,
and the small steps the phase notebooks would otherwise spell out in cells (runner re-exports them).

``--week 2026-W48`` is Monday 00:00 UTC to the next Monday; ``--start/--end`` is ``[start, end)``.
With neither, the period is the ISO week that contains the newest ``conn`` day in the store (any log
type when there is no conn) -- so a run on old sample data (2022) reports on the week the data is from,
not on an empty current week. The runner decides it just before the first phase that needs a period,
that is after phase 2 has ingested.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Settings
from .errors import ConfigError, StoreError

if TYPE_CHECKING:
    import pandas as pd

    from .collect import CollectReport

UTC = dt.timezone.utc
#: phase number -> notebook name (``notebooks/<name>.ipynb``); 0 is the explorer, not part of ``1-7``.
PHASES: dict[int, str] = {
    0: "00_explore", 1: "01_collect", 2: "02_parse", 3: "03_features", 4: "04_supervised",
    5: "05_unsupervised", 6: "06_detect", 7: "07_weekly_report",
}


@dataclass(frozen=True)
class Period:
    """A half-open UTC interval ``[start, end)`` with a label used in file names (``2022-W39``)."""

    start: dt.datetime
    end: dt.datetime

    @property
    def label(self) -> str:
        iso = self.start.isocalendar()
        if (self.start == _week_start(self.start) and self.end - self.start == dt.timedelta(days=7)):
            return f"{iso.year}-W{iso.week:02d}"
        last = (self.end - dt.timedelta(microseconds=1)).date()
        return f"{self.start:%Y-%m-%d}_{last:%Y-%m-%d}"

    def previous(self) -> Period:
        """The period of the same length just before this one (the report's comparison week)."""
        length = self.end - self.start
        return Period(self.start - length, self.start)

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "label": self.label}


def _week_start(when: dt.datetime) -> dt.datetime:
    day = when.astimezone(UTC).date()
    monday = day - dt.timedelta(days=day.weekday())
    return dt.datetime(monday.year, monday.month, monday.day, tzinfo=UTC)


def _parse_time(text: str | dt.datetime | dt.date, what: str) -> dt.datetime:
    if isinstance(text, dt.datetime):
        value = text
    elif isinstance(text, dt.date):
        value = dt.datetime(text.year, text.month, text.day)
    else:
        try:
            value = dt.datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{what} {text!r} is not an ISO date or time "
                              f"(e.g. 2026-11-23 or 2026-11-23T06:00:00Z)") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def week_period(week: str) -> Period:
    """``"2026-W48"`` -> Monday 00:00 UTC of that ISO week to the following Monday."""
    match = re.fullmatch(r"\s*(\d{4})-?W(\d{1,2})\s*", week, flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"week {week!r} is not an ISO week such as 2026-W48")
    year, number = int(match[1]), int(match[2])
    try:
        monday = dt.date.fromisocalendar(year, number, 1)
    except ValueError:
        raise ConfigError(f"week {week!r}: {year} has no ISO week {number}") from None
    start = dt.datetime(monday.year, monday.month, monday.day, tzinfo=UTC)
    return Period(start, start + dt.timedelta(days=7))


def newest_day(store_dir: Path) -> dt.date | None:
    """The newest ``date=`` partition of the store: conn first, else any log type; None if empty."""
    store_dir = Path(store_dir)
    if not store_dir.is_dir():
        return None
    candidates = [store_dir / "conn"] + sorted(p for p in store_dir.iterdir() if p.is_dir())
    for log_dir in candidates:
        days = []
        for part in log_dir.glob("date=*") if log_dir.is_dir() else ():
            try:
                if any(part.iterdir()):
                    days.append(dt.date.fromisoformat(part.name[len("date="):]))
            except ValueError:
                continue
        if days:
            return max(days)
    return None


def resolve_period(settings: Settings, start: str | dt.datetime | None = None,
                   end: str | dt.datetime | None = None, week: str | None = None) -> Period:
    """The period a run or a notebook works on (see the module docstring for the rule).

    Raises
    ------
    ConfigError
        A week together with start/end, only one of start/end, or end not after start.
    StoreError
        No period given and the store holds no data to take the newest week from.
    """
    start = start or None
    end = end or None
    if week:
        if start or end:
            raise ConfigError("give either a week or start/end, not both")
        return week_period(week)
    if start or end:
        if not (start and end):
            raise ConfigError("give both start and end (or a week, or neither for the newest week)")
        period = Period(_parse_time(start, "start"), _parse_time(end, "end"))
        if period.end <= period.start:
            raise ConfigError(f"end {period.end.isoformat()} is not after start {period.start.isoformat()}")
        return period
    day = newest_day(settings.store_dir)
    if day is None:
        raise StoreError(f"the store {settings.store_dir} holds no data, so there is no newest week to "
                         f"work on: ingest first (phase 2, `watchtower ingest`) or give --week/--start/--end")
    start_of_week = _week_start(dt.datetime(day.year, day.month, day.day, tzinfo=UTC))
    return Period(start_of_week, start_of_week + dt.timedelta(days=7))


def parse_phases(spec: str | int | list[int] | tuple[int, ...]) -> list[int]:
    """``"1-7"``, ``"2,3,6"``, ``"1-3,6"`` or ``3`` -> sorted phase numbers (0 is the explorer)."""
    if isinstance(spec, int):
        spec = str(spec)
    if isinstance(spec, (list, tuple)):
        numbers = set(int(p) for p in spec)
    else:
        numbers = set()
        for part in str(spec).replace(" ", "").split(","):
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not match:
                raise ConfigError(f"phases {spec!r}: {part!r} is not a number or a range such as 1-7")
            low, high = int(match[1]), int(match[2] or match[1])
            if high < low:
                raise ConfigError(f"phases {spec!r}: range {part!r} runs backwards")
            numbers.update(range(low, high + 1))
    unknown = sorted(n for n in numbers if n not in PHASES)
    if unknown or not numbers:
        raise ConfigError(f"phases {spec!r}: phases are 0-7 (0 explore, 1 collect ... 7 weekly report)")
    return sorted(numbers)


# ----------------------------------------------------------------------------------------------
# phase 1 (collect) and phase 2's Elasticsearch step, as the notebooks show and record them

COLLECT_COLUMNS = ["sensor", "status", "files", "bytes", "seconds", "unchanged", "errors"]


def sensors_note(settings: Settings) -> str:
    """Markdown for phase 1: the sensors and where their logs go, or that none is configured."""
    if not settings.sensors:
        return ("**No sensors configured: nothing to collect.** Add a `sensors:` list to the config file to pull "
                "logs; phase 2 still ingests the shipped sample.")
    names = ", ".join(f"{s.name} ({s.kind})" for s in settings.sensors)
    return f"Sensors: {names}; raw logs go to `{settings.raw_dir}`."


def collect_phase(settings: Settings, sensor: str | None = None) -> CollectReport:
    """Phase 1: ``collect.collect`` from every sensor (or ``sensor``); none configured is an empty report.

    Why not an error: a run on the shipped sample has no sensors, and phase 2 still has work.
    A ``sensor`` that is not configured is still an error (``ConfigError``).
    """
    from .collect import CollectReport, collect

    if not settings.sensors and not sensor:
        return CollectReport([])
    return collect(settings, sensor or None)


def collect_table(report: CollectReport) -> pd.DataFrame:
    """One row per sensor (:data:`COLLECT_COLUMNS`); empty, with the columns, when nothing was collected."""
    import pandas as pd

    return pd.DataFrame(report.rows(), columns=COLLECT_COLUMNS)


def collect_problems(report: CollectReport) -> list[str]:
    """Every refused file and error, as ``"sensor: problem"`` lines."""
    return [f"{s.name}: {problem}" for s in report.sensors for problem in [*s.refused, *s.errors]]


def collect_figures(report: CollectReport) -> dict[str, Any]:
    """Phase 1's record: sensors, files and bytes transferred, and the sensors that failed."""
    return {"sensors": len(report.sensors), "files": sum(s.files for s in report.sensors),
            "bytes": sum(s.bytes for s in report.sensors),
            "failed_sensors": [s.name for s in report.sensors if s.status == "failed"]}


def sync_figures(synced: Any) -> dict[str, Any]:
    """Phase 2's record of ``es.sync_pending``: rows indexed per log type, whether it went in, what waits."""
    return {"es_indexed": {t: r.created for t, r in synced.reports.items()}, "es_ok": synced.ok,
            "es_rows_pending": synced.rows_pending, "es_message": synced.message}
