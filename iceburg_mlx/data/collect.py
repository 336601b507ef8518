"""Logging interactions and feedback to JSONL, safe with many concurrent writers.

Each event is one JSON line written with a single `os.write` on an `O_APPEND` descriptor while
holding an exclusive `fcntl.flock`, so lines from concurrent processes never interleave or get
lost. Events:

- ``{"type": "interaction", "id", "ts", "messages", "model", "adapter", "latency_ms", ...}``
- ``{"type": "feedback", "id", "ts", "interaction", "kind": "up" | "down" | "edit" | "regenerate",
  "edited"?: str, "replacement"?: interaction id}``

`pairs.feedback_pairs` turns a log into preference pairs.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

from iceburg_mlx.data.io import dumps, iter_jsonl
from iceburg_mlx.errors import DataError

FEEDBACK_KINDS = ("up", "down", "edit", "regenerate")


def append_event(path: str | os.PathLike, event: dict[str, Any]) -> None:
    """Append one event as a JSON line under an exclusive lock (one write call)."""
    data = (dumps(event) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise DataError(f"{path}: cannot open log ({e.strerror or e})") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def log_interaction(
    path: str | os.PathLike,
    messages: list[dict[str, Any]],
    model: str,
    adapter: str | None = None,
    latency_ms: float | None = None,
    id: str | None = None,  # noqa: A002
    **extra: Any,
) -> str:
    """Log one conversation (ending with the model's answer); returns its id."""
    if not messages or messages[-1].get("role") != "assistant":
        raise DataError("an interaction must end with the assistant's answer")
    iid = id or uuid.uuid4().hex
    append_event(path, {"type": "interaction", "id": iid, "ts": time.time(), "messages": messages,
                        "model": model, "adapter": adapter, "latency_ms": latency_ms, **extra})
    return iid


def log_feedback(
    path: str | os.PathLike,
    interaction: str,
    kind: str,
    edited: str | None = None,
    replacement: str | None = None,
    **extra: Any,
) -> str:
    """Log feedback on an interaction: 'up', 'down', 'edit' (with the edited answer) or
    'regenerate' (with the id of the interaction that replaced it); returns the event id."""
    if kind not in FEEDBACK_KINDS:
        raise DataError(f"unknown feedback kind {kind!r}; supported: {', '.join(FEEDBACK_KINDS)}")
    if kind == "edit" and not (isinstance(edited, str) and edited.strip()):
        raise DataError("'edit' feedback needs the edited answer")
    if kind == "regenerate" and not replacement:
        raise DataError("'regenerate' feedback needs the replacement interaction id")
    fid = uuid.uuid4().hex
    event = {"type": "feedback", "id": fid, "ts": time.time(), "interaction": interaction, "kind": kind, **extra}
    if edited is not None:
        event["edited"] = edited
    if replacement is not None:
        event["replacement"] = replacement
    append_event(path, event)
    return fid


def iter_events(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, event) from a log; DataError names file:line on a corrupt line."""
    yield from iter_jsonl(path)
