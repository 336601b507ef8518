"""Quality score in [0, 1] from transparent features, plus per-role rules.

Every feature is a number in [0, 1] (1 = good) and is written next to the score, so a reader
can see why an example scored low:

- ``length``: answer words; ramps up to 30 words, flat to 1500, decays after.
- ``diversity``: distinct word bigrams / bigrams (repetition and low n-gram diversity).
- ``repetition``: 1 - share of repeated word trigrams.
- ``boilerplate``: 1 - 0.25 per boilerplate phrase ("it is important to note", template openers...).
- ``refusal``: 0 when the answer refuses ("as an AI language model", "I cannot help").
- ``contamination``: 0 when chat-template tokens or "User:/Assistant:" turn markers leak into it.
- ``truncation``: 0 when the answer stops mid-sentence or leaves a code fence open.
- ``role``: the role rule, when a role is given (dissident challenges a claim; oracle states a
  verdict and a confidence; surveyor names sources and open questions; synthesist links two
  fields through a mechanism).

score = mean(length, diversity, repetition, boilerplate, truncation[, role counted twice])
        x refusal-gate x contamination-gate (gates multiply by 0.2 when they fire).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iceburg_mlx.data.formats import assistant_text
from iceburg_mlx.atomic import open_atomic
from iceburg_mlx.data.io import dumps, iter_jsonl
from iceburg_mlx.errors import ConfigError, DataError

WORD_RE = re.compile(r"[A-Za-z0-9']+")
BOILERPLATE = [
    r"it is (?:important|worth) (?:to note|noting)", r"in conclusion", r"has seen significant advances",
    r"core principles are (?:now )?well[- ]established", r"further (?:research|work) is needed",
    r"the research community remains optimistic", r"in today'?s (?:fast-paced )?world", r"plays a crucial role",
    r"i hope this helps", r"let me know if you", r"as (?:previously|mentioned) (?:mentioned|above)",
]
REFUSAL = [
    r"as an ai(?: language model)?", r"i(?: am|'m) (?:sorry|unable)", r"i can(?:no|')t (?:help|assist|provide|do that)",
    r"i (?:do not|don't) have (?:access|the ability)", r"i must decline",
]
CONTAMINATION = [r"<\|[a-z_]+\|>", r"\[/?INST\]", r"<</?SYS>>", r"^\s*(?:user|assistant|human|system)\s*:"]
_BOIL = [re.compile(p, re.I) for p in BOILERPLATE]
_REFUSE = re.compile("|".join(REFUSAL), re.I)
_CONTAM = re.compile("|".join(CONTAMINATION), re.I | re.M)


def _has(pattern: str, text: str) -> bool:
    return re.search(pattern, text, re.I) is not None


def dissident_rule(t: str) -> float:
    """A dissident answer challenges: contrast plus a reason or counter-evidence."""
    contrast = _has(r"\b(?:however|but|contrary|disagree|overstated|flawed?|wrong|not supported|questionable|challenge)", t)
    reason = _has(r"\b(?:because|evidence|data|study|studies|counter-?example|assum\w+|fails? to|ignores?)\b", t)
    return 0.5 * contrast + 0.5 * reason


def oracle_rule(t: str) -> float:
    """An oracle answer states a verdict and a confidence."""
    verdict = _has(r"\b(?:verdict|conclusion|(?:is|are) (?:true|false|correct|incorrect|supported|unsupported)|likely|unlikely)\b", t)
    confidence = _has(r"\b(?:confidence|\d{1,3}\s?%|probability|certain(?:ty)?)\b", t)
    return 0.5 * verdict + 0.5 * confidence


def surveyor_rule(t: str) -> float:
    """A surveyor answer names sources and open questions."""
    sources = _has(r"(?:https?://|\bdoi\b|et al\.|\[\d+\]|\((?:19|20)\d\d\)|\b(?:19|20)\d\d\b|according to)", t)
    questions = _has(r"(?:open questions?|unknown|unclear|remains? to be|unresolved|\?)", t)
    return 0.5 * sources + 0.5 * questions


FIELDS = r"\b(?:biology|physics|chemistry|economics|ecology|neuroscience|computer science|mathematics|psychology|" \
         r"medicine|geology|linguistics|sociology|engineering|climate|genetics|evolution|thermodynamics|" \
         r"information theory|immunology|materials|finance|epidemiology|machine learning|statistics)\b"


def synthesist_rule(t: str) -> float:
    """A synthesist answer links two fields through a mechanism."""
    fields = {m.lower() for m in re.findall(FIELDS, t, re.I)}
    mechanism = _has(r"\b(?:mechanism|because|via|through|drives?|leads? to|mediated|feedback|causes?|analogous to|maps? onto)\b", t)
    return 0.5 * min(1.0, len(fields) / 2) + 0.5 * mechanism


ROLE_RULES: dict[str, Callable[[str], float]] = {
    "dissident": dissident_rule, "oracle": oracle_rule, "surveyor": surveyor_rule, "synthesist": synthesist_rule,
}


def _length(n: int) -> float:
    if n < 30:
        return n / 30
    if n <= 1500:
        return 1.0
    return max(0.0, 1.0 - (n - 1500) / 3000)


def features(text: str, role: str | None = None) -> dict[str, float]:
    """The feature breakdown of one answer (each in [0, 1], 1 = good)."""
    words = [w.lower() for w in WORD_RE.findall(text)]
    n = len(words)
    bigrams = list(zip(words, words[1:]))
    trigrams = list(zip(words, words[1:], words[2:]))
    f = {
        "length": _length(n),
        "diversity": len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
        "repetition": 1.0 - (len(trigrams) - len(set(trigrams))) / len(trigrams) if trigrams else 0.0,
        "boilerplate": max(0.0, 1.0 - 0.25 * sum(bool(p.search(text)) for p in _BOIL)),
        "refusal": 0.0 if _REFUSE.search(text[:2000]) else 1.0,
        "contamination": 0.0 if _CONTAM.search(text) else 1.0,
    }
    stripped = text.rstrip()
    open_fence = text.count("```") % 2 == 1
    f["truncation"] = 0.0 if open_fence or (stripped and stripped[-1] not in ".!?)]}\"'`*:;") else 1.0
    if role is not None:
        if role not in ROLE_RULES:
            raise ConfigError(f"unknown role {role!r}; supported: {', '.join(ROLE_RULES)}")
        f["role"] = ROLE_RULES[role](text)
    return {k: round(v, 4) for k, v in f.items()}


def combine(f: dict[str, float]) -> float:
    parts = [f["length"], f["diversity"], f["repetition"], f["boilerplate"], f["truncation"]]
    if "role" in f:
        parts += [f["role"], f["role"]]
    s = sum(parts) / len(parts)
    s *= 1.0 if f["refusal"] else 0.2
    s *= 1.0 if f["contamination"] else 0.2
    return round(min(1.0, max(0.0, s)), 4)


def record_role(record: dict[str, Any], default: str | None) -> str | None:
    if default is not None:
        return default
    meta = record.get("meta")
    role = record.get("role") or (meta.get("role") if isinstance(meta, dict) else None)
    return role if role in ROLE_RULES else None


def score_record(record: dict[str, Any], role: str | None = None) -> tuple[float, dict[str, float]]:
    """(quality score, feature breakdown) of one record's assistant answers."""
    f = features(assistant_text(record), record_role(record, role))
    return combine(f), f


@dataclass
class ScoreReport:
    records: int = 0
    kept: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * 10)
    mean: float = 0.0


def score_file(path: str | os.PathLike, out: str | os.PathLike, role: str | None = None,
               min_quality: float | None = None) -> ScoreReport:
    """Write each record with `quality_score` and `quality_features` (all other fields kept);
    with min_quality, drop records scoring below it."""
    if role is not None and role not in ROLE_RULES:
        raise ConfigError(f"unknown role {role!r}; supported: {', '.join(ROLE_RULES)}")
    rep = ScoreReport()
    total = 0.0
    with open_atomic(out) as f:
        for n, rec in iter_jsonl(path):
            try:
                s, feats = score_record(rec, role)
            except DataError as e:
                raise DataError(f"{path}:{n}: {e}") from None
            rep.records += 1
            total += s
            rep.histogram[min(9, int(s * 10))] += 1
            if min_quality is not None and s < min_quality:
                continue
            rep.kept += 1
            f.write(dumps({**rec, "quality_score": s, "quality_features": feats}))
            f.write("\n")
    rep.mean = total / rep.records if rep.records else 0.0
    return rep


def score_many(records: list[dict[str, Any]], role: str | None = None) -> np.ndarray:
    return np.array([score_record(r, role)[0] for r in records], dtype=np.float64)
