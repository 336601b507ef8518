"""Streaming validation: every problem of a JSONL file as `file:line: reason`, never an exception.

`validate_record` checks one parsed record and returns reasons; `validate_file` streams a file
(bad bytes, bad JSON, BOM, CRLF, blank lines and huge lines included), tracks duplicate ids and,
at the end, measures the template fraction of a sample of assistant answers and warns above
a threshold (the lesson of the first ICEBURG models: template data teaches templates).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceburg_mlx.data import formats
from iceburg_mlx.data.io import iter_lines, parse_line
from iceburg_mlx.errors import DataError

# Chat-template control tokens that must never appear inside content (they would be tokenised
# as control tokens and corrupt the turn structure): <|im_start|>, <|eot_id|>, [INST] and kin.
TEMPLATE_TOKEN_RE = re.compile(
    r"<\|(?:im_start|im_end|im_sep|endoftext|begin_of_text|end_of_text|start_header_id|end_header_id|eot_id|eom_id"
    r"|system|user|assistant|end|fim_\w+)\|>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>"
)
SCORE_FIELDS = ("quality_score", "emergence_score")
CHARS_PER_TOKEN = 4          # the estimate behind a record's length in tokens when no tokenizer is given
LONG_RECORD_TOKENS = 32768   # a record past this is far beyond any sensible training context: a warning


@dataclass
class Problem:
    path: str
    line: int
    reason: str
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.reason}" if self.severity == "error" else f"{where}: {self.severity}: {self.reason}"


@dataclass
class ValidationReport:
    path: str
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    formats: Counter = field(default_factory=Counter)
    template_fraction: float | None = None
    max_problems: int = 1000
    suppressed: int = 0

    @property
    def errors(self) -> int:
        return sum(p.severity == "error" for p in self.problems) + self.suppressed

    @property
    def warnings(self) -> int:
        return sum(p.severity == "warning" for p in self.problems)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def add(self, line: int, reason: str, severity: str = "error") -> None:
        if len(self.problems) >= self.max_problems and severity == "error":
            self.suppressed += 1
            return
        self.problems.append(Problem(self.path, line, reason, severity))


def _short(x: Any, n: int = 40) -> str:
    s = repr(x)
    return s if len(s) <= n else s[: n - 3] + "..."


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _check_content(where: str, content: Any, out: list[str]) -> None:
    if not isinstance(content, str):
        out.append(f"{where}: content is not a string (got {type(content).__name__})")
        return
    if not content.strip():
        out.append(f"{where}: empty content")
        return
    if _has_surrogate(content):
        out.append(f"{where}: content holds a lone surrogate (not valid Unicode)")
    m = TEMPLATE_TOKEN_RE.search(content)
    if m:
        out.append(f"{where}: chat-template token {m.group(0)} inside content")


def check_messages(messages: list[dict[str, Any]], out: list[str], need_assistant: bool = True) -> None:
    """Roles known and ordered (optional system first, then user/assistant alternating), contents valid."""
    prev = None
    for i, m in enumerate(messages):
        role = m.get("role")
        where = f"message {i}"
        if role not in formats.ROLES:
            out.append(f"{where}: unknown role {_short(role)} (expected system, user or assistant)")
            prev = role
            continue
        if role == "system" and i != 0:
            out.append(f"{where}: misordered roles: system turn after the start")
        elif role == "user" and prev == "user":
            out.append(f"{where}: misordered roles: two user turns in a row")
        elif role == "assistant" and prev in (None, "system"):
            out.append(f"{where}: misordered roles: assistant turn before any user turn")
        elif role == "assistant" and prev == "assistant":
            out.append(f"{where}: misordered roles: two assistant turns in a row")
        _check_content(where, m.get("content"), out)
        prev = role
    if need_assistant and not any(m.get("role") == "assistant" for m in messages):
        out.append("no assistant turn")


def validate_record(record: Any) -> list[str]:
    """Reasons one parsed record is invalid ([] if it is fine)."""
    out: list[str] = []
    try:
        fmt = formats.detect_format(record)
        if fmt == "preference":
            prompt, chosen, rejected = formats.preference_parts(record)
            check_messages(prompt, out, need_assistant=False)
            if not any(m.get("role") == "user" for m in prompt):
                out.append("preference prompt has no user turn")
            _check_content("chosen", chosen, out)
            _check_content("rejected", rejected, out)
            if isinstance(chosen, str) and isinstance(rejected, str) and chosen.strip() == rejected.strip():
                out.append("chosen == rejected")
        elif fmt == "text":
            _check_content("text", record["text"], out)
        elif fmt == "chatml" and "expect" in record:  # an eval item: a prompt and its checks, no answer
            msgs = formats.to_messages(record)
            check_messages(msgs, out, need_assistant=False)
            if not msgs or msgs[-1].get("role") != "user":
                out.append("eval item (has 'expect') does not end with a user turn")
            if not isinstance(record["expect"], dict):
                out.append(f"'expect' is not an object (got {_short(record['expect'])})")
        else:
            check_messages(formats.to_messages(record), out)
    except DataError as e:
        out.append(str(e))
    for key in SCORE_FIELDS:
        if key in record:
            v = record[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or not 0.0 <= v <= 1.0:
                out.append(f"{key} is not a number in [0, 1] (got {_short(v)})")
    return out


def _strings(rec: Any) -> Iterable[str]:
    """Every string a record holds (contents, prompt, answers, ids), depth first."""
    if isinstance(rec, str):
        yield rec
    elif isinstance(rec, dict):
        for v in rec.values():
            yield from _strings(v)
    elif isinstance(rec, list):
        for v in rec:
            yield from _strings(v)


def validate_file(
    path: str | Path,
    seen_ids: dict[Any, str] | None = None,
    template_threshold: float = 0.3,
    template_sample: int = 5000,
    max_problems: int = 1000,
    count_tokens=None,
    long_tokens: int = LONG_RECORD_TOKENS,
    allowed_formats: tuple[str, ...] | None = None,
) -> ValidationReport:
    """Validate one JSONL file; never raises on its content (an unreadable file is one problem).

    `seen_ids` (id -> "file:line") may be shared between calls to find duplicates across files.
    A file with no records is an error. A record longer than `long_tokens` tokens is a warning
    with its length: counted by `count_tokens(text)` when given (a tokenizer), else estimated at
    CHARS_PER_TOKEN characters per token. With `allowed_formats`, a record of another format is an error.
    """
    report = ValidationReport(str(path), max_problems=max_problems)
    ids = {} if seen_ids is None else seen_ids
    sample: list[str] = []  # a reservoir of assistant answers for the template check
    rng = random.Random(0)
    try:
        for n, line in iter_lines(path):
            report.records += 1
            try:
                rec = parse_line(line)
            except DataError as e:
                report.add(n, str(e))
                continue
            for reason in validate_record(rec):
                report.add(n, reason)
            chars = sum(map(len, _strings(rec)))
            if chars > long_tokens * CHARS_PER_TOKEN // 2:  # only then is it worth counting
                n_tok = count_tokens("\n".join(_strings(rec))) if count_tokens else chars // CHARS_PER_TOKEN
                if n_tok > long_tokens:
                    how = "" if count_tokens else f" (estimated at {CHARS_PER_TOKEN} characters per token)"
                    report.add(n, f"record is {n_tok:,} tokens long{how}, far beyond any training context "
                                  f"(over {long_tokens:,}): it would be truncated or dropped", severity="warning")
            try:
                fmt = formats.detect_format(rec)
            except DataError:
                fmt = "unknown"
            report.formats[fmt] += 1
            if allowed_formats is not None and fmt != "unknown" and fmt not in allowed_formats:
                report.add(n, f"a {fmt} record, but data.format admits only {', '.join(allowed_formats)}")
            rid = rec.get("id")
            if rid is not None and isinstance(rid, (str, int, float, bool)):
                if rid in ids:
                    report.add(n, f"duplicate id {_short(rid)} (first at {ids[rid]})")
                else:
                    ids[rid] = f"{path}:{n}"
            if len(sample) < template_sample:
                sample.append(formats.assistant_text(rec))
            else:
                j = rng.randrange(report.records)
                if j < template_sample:
                    sample[j] = formats.assistant_text(rec)
    except (DataError, OSError) as e:
        report.add(0, str(e))
    if report.records == 0 and not report.problems:
        report.add(0, "no records (the file is empty)")
    if template_threshold is not None and len(sample) >= 4:
        from iceburg_mlx.data.templates import template_report

        tr = template_report(sample)
        report.template_fraction = tr.fraction
        if tr.fraction > template_threshold:
            report.add(
                0,
                f"{tr.fraction:.0%} of examples share a template skeleton (threshold {template_threshold:.0%}); "
                f"e.g. {tr.clusters[0].skeleton[:120]!r}",
                severity="warning",
            )
    return report


def validate_files(paths: Iterable[str | Path], **kwargs: Any) -> list[ValidationReport]:
    """Validate several files, sharing the duplicate-id table between them."""
    seen: dict[Any, str] = {}
    return [validate_file(p, seen_ids=seen, **kwargs) for p in paths]


def check_training_file(path: str | Path, key: str, skip_invalid: bool = False, count_tokens=None,
                        shown: int = 5, formats: tuple[str, ...] | None = None) -> tuple[set[int], list[str]]:
    """Validate a training or preference file before any compute (the same checks as `data validate`).

    Returns (line numbers to skip, notes for the user). Errors raise DataError with up to `shown`
    `file:line: reason` lines, unless `skip_invalid`, which returns those lines to skip and a note
    counting them (an error of the file as a whole, such as no records, always raises). Warnings
    (a template-heavy file, a record far beyond any context) come back as notes. `formats`: the
    record formats the recipe's data.format admits (None: any)."""
    report = validate_file(path, count_tokens=count_tokens, allowed_formats=formats)
    errors = [p for p in report.problems if p.severity == "error"]
    notes = [f"{key}: {p}" for p in report.problems if p.severity == "warning"]
    whole = [p for p in errors if p.line == 0]
    if errors and (whole or not skip_invalid):
        more = report.errors - min(len(errors), shown)
        lines = [str(p) for p in (whole or errors)[:shown]]
        tail = (f"\n... and {more} more (`iceburg-mlx data validate {path}` lists them all)" if more > 0 else "")
        fix = "" if whole else "\nfix them, or set data.skip_invalid: true to train on the valid records only"
        raise DataError(f"{key}: {path} fails validation:\n" + "\n".join(lines) + tail + fix)
    bad = {p.line for p in errors}
    if bad:
        notes.append(f"{key}: skipping {len(bad)} invalid records of {report.records} (data.skip_invalid)")
    return bad, notes
