"""A progress bar over the named steps of a long call (``watchtower detect``, ``watchtower train``).

Why: scoring a week or training with leave-one-capture-out takes minutes on a big store, and an
analyst at a terminal should see which step is running. The bar goes to stderr and only when asked
(``progress=True``) or, with ``progress=None``, when stderr is a terminal; notebooks and scheduled
runs pass False and log instead.
"""
from __future__ import annotations

from types import TracebackType
from typing import Any


class Steps:
    """``with Steps(3, "detect", progress) as steps: steps.start("loading"); ...``"""

    def __init__(self, total: int, desc: str, progress: bool | None) -> None:
        from tqdm.auto import tqdm

        self.bar: Any = tqdm(total=total, desc=desc, unit="step", leave=False,
                             disable=None if progress is None else not progress,
                             bar_format="{desc}: {n_fmt}/{total_fmt} {postfix} [{elapsed}]")
        self._running = False

    def start(self, what: str) -> None:
        """The previous step is done; ``what`` runs now."""
        if self._running:
            self.bar.update(1)
        self._running = True
        self.bar.set_postfix_str(what)

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None and self._running:
            self.bar.update(1)
        self.bar.close()
