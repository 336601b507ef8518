"""JSONL reading and atomic writing.

Readers stream one line at a time (a 20 MB line is fine, a 20 GB file too); they tolerate a
UTF-8 byte-order mark, CRLF line ends and blank lines. `iter_jsonl` raises `DataError` naming
`file:line` on the first bad line; `iter_lines` never raises on content and is what `validate`
builds on. Writers go to a temporary file in the target directory and `os.replace` it into
place (`iceburg_mlx.atomic`), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from iceburg_mlx.atomic import open_atomic
from iceburg_mlx.errors import DataError

BOM = b"\xef\xbb\xbf"


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, raw bytes without line end or BOM), skipping blank lines."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; a generator must own it
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror or e})") from e
    with f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            yield n, line


def parse_line(line: bytes) -> dict[str, Any]:
    """Decode one JSONL line into a dict; raises DataError(reason) without a location."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"invalid UTF-8 at byte {e.start}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"bad JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise DataError("bad JSON: nested too deeply") from None
    except ValueError as e:  # e.g. integer string too long to convert
        raise DataError(f"bad JSON: {str(e)[:80]}") from None
    if not isinstance(obj, dict):
        raise DataError(f"not a JSON object (got {type(obj).__name__})")
    return obj


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) for each non-blank line; DataError('file:line: reason') on a bad one."""
    for n, line in iter_lines(path):
        try:
            yield n, parse_line(line)
        except DataError as e:
            raise DataError(f"{path}:{n}: {e}") from None


def iter_jsonl_many(paths: Iterable[str | os.PathLike]) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Yield (path, line number, record) over several files in order."""
    for p in paths:
        for n, rec in iter_jsonl(p):
            yield str(p), n, rec


def dumps(record: Any) -> str:
    """One JSONL line (no newline). Keeps non-ASCII readable; escapes lone surrogates."""
    s = json.dumps(record, ensure_ascii=False, separators=(", ", ": "))
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = json.dumps(record, ensure_ascii=True, separators=(", ", ": "))
    return s


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Atomically write records as JSONL; returns the number written."""
    n = 0
    with open_atomic(path) as f:
        for rec in records:
            f.write(dumps(rec))
            f.write("\n")
            n += 1
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write one pretty-printed JSON document."""
    with open_atomic(path) as f:
        f.write(json.dumps(obj, ensure_ascii=False, indent=2, default=str))
        f.write("\n")
