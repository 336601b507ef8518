"""Atomic writes for the whole library: a temporary beside the destination, renamed into place
only when complete, so a reader (or a crash, or Ctrl-C) never sees a half-written file or directory.

    write_text(path, text); write_json(path, obj)
    with atomic_path(path, suffix=".safetensors") as tmp: mx.save_safetensors(str(tmp), arrays)
    with open_atomic(path) as f: f.write(...)                # a stream, fsynced before the rename
    with atomic_dir(run_dir / "adapter") as tmp: save(tmp)   # a whole directory, swapped in

Files get the mode a plain `open()` would give (0666 less the umask), not mkstemp's 0600.
A destination that cannot be written (its parent is a file, permission denied) raises
`WriteError` naming the path, never a bare OSError.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from iceburg_mlx.errors import IceburgError


class WriteError(IceburgError):
    """A destination that cannot be created or written."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents); WriteError when a parent is a file or permission is refused."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WriteError(f"{p}: exists and is not a directory") from None
    except OSError as e:
        raise WriteError(f"{p}: cannot create the directory ({_why(e)})") from None
    return p


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before hours of work) when `path` could not be created as a directory: walks up
    to the first existing ancestor, which must be a writable directory."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise WriteError(f"{p}: exists and is not a directory")
        probe = p
    else:
        probe = p.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise WriteError(f"{p}: cannot create it, {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise WriteError(f"{p}: cannot write there (permission denied on {probe})")
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on normal exit it replaces `path`, on error it is removed.

    `suffix` keeps writers that insist on an extension (mx.save_safetensors) from renaming it."""
    path = Path(path)
    ensure_dir(path.parent if str(path.parent) else ".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".part", dir=path.parent)
    except OSError as e:
        raise WriteError(f"{path}: cannot write ({_why(e)})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_with(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = "") -> Path:
    with atomic_path(path, suffix) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_with(path, lambda t: t.write_text(text, encoding="utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_with(path, lambda t: t.write_bytes(data))


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, records) -> Path:
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """A file object on a temporary beside `path`; on success it is fsynced and renamed over `path`."""
    with atomic_path(path) as tmp:
        kwargs = {"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside `final`; on success it replaces `final` (an old
    `final` is moved aside first and removed after), on error it is removed and `final` is kept."""
    final = Path(final)
    ensure_dir(final.parent)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = final.parent / f".tmp-{final.name}-{tag}"
    try:
        tmp.mkdir()
    except OSError as e:
        raise WriteError(f"{final}: cannot write ({_why(e)})") from None
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.parent / f".old-{final.name}-{tag}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["WriteError", "atomic_dir", "atomic_path", "check_writable", "ensure_dir", "open_atomic",
           "write_bytes", "write_json", "write_jsonl", "write_text", "write_with"]
