"""Atomic file writes: a temporary file in the destination directory, renamed into place when complete."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on normal exit it replaces `path`, on error it is removed.

    `suffix` keeps writers that insist on an extension (mx.save_safetensors) from renaming it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_with(path: Path, write: Callable[[Path], None], suffix: str = "") -> Path:
    with atomic_path(path, suffix) as tmp:
        write(tmp)
    return path


def write_text(path: Path, text: str) -> Path:
    return write_with(path, lambda t: t.write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


__all__ = ["atomic_path", "write_json", "write_text", "write_with"]
