"""Progress of long steps (synthesis, one row per stack, clean-up) on stderr.

On a terminal: a rich live display, one row per step with a spinner, the step's latest
activity (Terraform's last resource line) and the time it has taken; finished rows stay. Off
a terminal (CI logs, pipes): plain lines when a step starts and ends, and at most one activity
line per step per PLAIN_INTERVAL seconds, so a 20-minute EKS apply neither floods a log nor
looks hung. stdout stays free for results (tables, JSON).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self, TextIO

PLAIN_INTERVAL = 60.0


class Display:
    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        force_terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr, force_terminal=force_terminal, highlight=False)
        self.rich = self.console.is_terminal
        self.clock = clock
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._last_plain: dict[str, float] = {}

    def __enter__(self) -> Self:
        if self.rich:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                SpinnerColumn(finished_text=" "),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def start(self, key: str, text: str) -> None:
        """A step begins (a new row on a terminal)."""
        if self._progress is not None:
            if key in self._tasks:
                self._progress.update(self._tasks[key], description=text)
                self._progress.reset(self._tasks[key], total=None)
            else:
                self._tasks[key] = self._progress.add_task(text, total=None)
        else:
            self._print(text)
        self._last_plain[key] = self.clock()

    def update(self, key: str, text: str) -> None:
        """What a step is doing now; plain output shows it at most once per PLAIN_INTERVAL."""
        if self._progress is not None and key in self._tasks:
            self._progress.update(self._tasks[key], description=text)
            return
        now = self.clock()
        if self._progress is None and now - self._last_plain.get(key, 0.0) >= PLAIN_INTERVAL:
            self._last_plain[key] = now
            self._print(text)

    def finish(self, key: str, text: str, *, ok: bool = True) -> None:
        mark = "✓" if ok else "✗"
        if self._progress is not None and key in self._tasks:
            self._progress.update(self._tasks[key], description=f"{mark} {text}", total=1, completed=1)
        else:
            self._print(f"{'done' if ok else 'FAILED'}: {text}")

    def note(self, text: str) -> None:
        self._print(f"note: {text}")

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the live display while the user reads a plan and answers a question."""
        progress = self._progress
        if progress is not None:
            progress.stop()
        try:
            yield
        finally:
            if progress is not None:
                progress.start()
