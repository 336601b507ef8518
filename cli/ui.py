"""Terminal output for every command: consoles, progress and tables that read well in a terminal
and in a pipe, a log file, nohup or CI.

On a terminal, progress is a rich bar with rate and ETA. Anywhere else a bar redraws into one
garbled line, so `progress()` prints a plain line per update instead (at most one every
`LINE_EVERY` seconds, and always the last), each with the count, the rate, the ETA and the
command's own statistics. Consoles that are not terminals get a wide page, so tables do not wrap
at rich's default 80 columns.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

PIPE_WIDTH = 200     # columns for a console that is not a terminal
LINE_EVERY = 5.0     # seconds between plain progress lines


def console(stderr: bool = False, **kwargs: Any) -> Console:
    """A rich Console; one that is not a terminal is PIPE_WIDTH wide (tables do not fold)."""
    c = Console(stderr=stderr, **kwargs)
    if not c.is_terminal:
        c.width = PIPE_WIDTH
    return c


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Task:
    def __init__(self, description: str, total: float | None, unit: str, fields: dict):
        self.description, self.total, self.unit, self.fields = description, total, unit, fields
        self.completed = 0.0
        self.start = time.monotonic()
        self.printed_at = 0.0
        self.printed = None


class LineProgress:
    """rich.progress.Progress's subset used here (add_task, update, advance, console.print, the
    context manager), printing plain lines for logs."""

    def __init__(self, con: Console, unit: str = "it", every: float = LINE_EVERY):
        self.console, self.unit, self.every = con, unit, every
        self.tasks: list[_Task] = []

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        for i, t in enumerate(self.tasks):   # the last state of each task that got anywhere
            if t.completed:
                self._line(i, force=True)

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        self.tasks.append(_Task(description, total, self.unit, dict(fields)))
        return len(self.tasks) - 1

    def update(self, task: int, *, completed: float | None = None, total: float | None = None,
               description: str | None = None, advance: float | None = None, **fields: Any) -> None:
        t = self.tasks[task]
        if total is not None:
            t.total = total
        if description is not None:
            t.description = description
        if completed is not None:
            t.completed = completed
        if advance:
            t.completed += advance
        t.fields.update(fields)
        self._line(task, force=t.total is not None and t.completed >= t.total)

    def advance(self, task: int, amount: float = 1) -> None:
        self.update(task, advance=amount)

    def _line(self, task: int, force: bool = False) -> None:
        t = self.tasks[task]
        now = time.monotonic()
        state = (t.completed, t.description)
        if state == t.printed or (not force and now - t.printed_at < self.every):
            return
        elapsed = now - t.start
        rate = t.completed / elapsed if elapsed > 0 and t.completed else None
        eta = (t.total - t.completed) / rate if rate and t.total is not None else None
        count = f"{t.completed:g}/{t.total:g}" if t.total is not None else f"{t.completed:g}"
        stats = " ".join(str(v) for v in t.fields.values() if v not in (None, ""))
        parts = [t.description, count, stats,
                 f"{rate:.2f} {t.unit}/s" if rate else "", f"elapsed {_clock(elapsed)}",
                 f"ETA {_clock(eta)}" if t.total is not None and t.completed < t.total else ""]
        self.console.print(" | ".join(p for p in parts if p), markup=False, highlight=False, soft_wrap=True)
        t.printed_at, t.printed = now, state


class _Fields(ProgressColumn):
    """The task's own fields (e.g. stats=...), as the plain lines show them."""

    def render(self, task) -> Text:
        return Text(" ".join(str(v) for v in task.fields.values() if v not in (None, "")))


class _Rate(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} {self.unit}/s" if task.speed else "")


class _Quiet(LineProgress):
    def _line(self, task: int, force: bool = False) -> None:
        return None


def progress(con: Console, unit: str = "it", disable: bool = False,
             transient: bool = False) -> Progress | LineProgress:
    """A progress display for `con`: a bar on a terminal, plain lines elsewhere, nothing when
    `disable`. Fields passed to add_task/update (e.g. stats=...) appear after the count in both."""
    if disable:
        return _Quiet(con, unit)
    if not con.is_terminal:
        return LineProgress(con, unit)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Fields(),
                    _Rate(unit), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=con,
                    transient=transient)


__all__ = ["LINE_EVERY", "LineProgress", "PIPE_WIDTH", "console", "progress"]
