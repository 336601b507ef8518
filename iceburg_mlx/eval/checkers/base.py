"""The checker registry and the helpers every checker shares."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iceburg_mlx.errors import ConfigError


@dataclass
class CheckResult:
    passed: bool
    score: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "score": round(float(self.score), 4), "details": self.details}


Checker = Callable[[str, dict[str, Any]], CheckResult]
CHECKERS: dict[str, Checker] = {}


def register(name: str) -> Callable[[Checker], Checker]:
    def deco(fn: Checker) -> Checker:
        CHECKERS[name] = fn
        return fn
    return deco


def get_checker(name: str) -> Checker:
    """The checker registered for bench `name`; ConfigError listing the known benches otherwise."""
    try:
        return CHECKERS[name]
    except KeyError:
        raise ConfigError(f"unknown bench {name!r}; supported: {', '.join(sorted(CHECKERS))}") from None


def _phrase(p: str) -> re.Pattern:
    """A case-insensitive pattern for a keyword or phrase, on word boundaries where it has words."""
    body = re.escape(p.strip()).replace(r"\ ", r"\s+")
    left = r"\b" if p[:1].isalnum() else ""
    right = r"\b" if p[-1:].isalnum() else ""
    return re.compile(left + body + right, re.IGNORECASE)


def mentions(text: str, phrase: str) -> bool:
    """Case-insensitive substring match (data/README.md's rule: stems like "extrapolat" count)."""
    return bool(phrase.strip()) and phrase.strip().lower() in text.lower()


def _groups(items: Any) -> list[list[str]]:
    """Keywords given as strings or lists of synonyms -> a list of synonym groups."""
    if isinstance(items, str):
        items = [items]
    return [[str(s) for s in g] if isinstance(g, (list, tuple)) else [str(g)] for g in (items or [])]
