"""The four role checkers: oracle, dissident, surveyor, synthesist (see the package docstring)."""

from __future__ import annotations

import re
from typing import Any

from iceburg_mlx.eval.checkers.base import CheckResult, _groups, _phrase, mentions, register


# ----------------------------------------------------------------------------- oracle

VERDICTS = ("true", "false", "partly true", "unverifiable")
# Order matters: more specific phrases first ("partly true" before "true", "not true" -> false).
_VERDICT_PATTERNS: list[tuple[str, str]] = [
    ("partly true", (r"\b(partly|partially|half|mostly|somewhat|not (entirely|completely|wholly|fully|quite))[\s-]+"
                     r"(true|correct|accurate)\b|\bmixed\b|\bmisleading\b")),
    ("unverifiable", (r"\bunverifiable\b|\b(cannot|can't|can ?not|could not|couldn't) be (verified|confirmed|"
                      r"determined)\b|\bnot verifiable\b|\binsufficient (evidence|information)\b|\bunknown\b")),
    ("false", r"\bfalse\b|\buntrue\b|\bnot (true|correct|accurate)\b|\bincorrect\b|\binaccurate\b|\bwrong\b"),
    ("true", r"\btrue\b|\bcorrect\b|\baccurate\b"),
]
_VERDICT_LINE = re.compile(r"^[\s*#>_-]*verdict[\s*_]*[:\-–]\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_CONFIDENCE = re.compile(r"confidence[\s*_]*[:=\-–]?\s*(?:of\s+|is\s+)?([0-9]*\.?[0-9]+)\s*(%?)", re.IGNORECASE)
_CONFIDENCE_WORD = re.compile(r"confidence[\s*_]*[:=\-–]?\s*(?:is\s+)?(very high|high|medium|moderate|low|very low)\b",
                              re.IGNORECASE)
CONFIDENCE_WORDS = {"very high": 0.95, "high": 0.9, "medium": 0.6, "moderate": 0.6, "low": 0.3, "very low": 0.1}


def normalize_verdict(value: Any) -> str | None:
    """A free-form verdict label -> one of VERDICTS (None if unrecognised)."""
    return _first_verdict(str(value)) if value is not None else None


def _first_verdict(text: str) -> str | None:
    """The verdict phrase that starts earliest in `text` (the more specific one on a tie)."""
    best: tuple[int, int, str] | None = None
    for rank, (label, pattern) in enumerate(_VERDICT_PATTERNS):
        m = re.search(pattern, text, re.IGNORECASE)
        if m and (best is None or (m.start(), rank) < best[:2]):
            best = (m.start(), rank, label)
    return best[2] if best else None


_CLAIM_IS = re.compile(r"\b(?:the )?(?:claim|statement|assertion|this|it|that)(?: is| was| seems| appears)"
                       r"(?: to be)?\s+([^.;:\n]{0,40})", re.IGNORECASE)


def parse_verdict(text: str) -> str | None:
    """The answer's verdict: the first "Verdict: ..." line, else the first "the claim is <verdict>"
    phrase, else the first verdict phrase anywhere."""
    m = _VERDICT_LINE.search(text)
    if m:
        v = _first_verdict(m.group(1))
        if v:
            return v
    for m in _CLAIM_IS.finditer(text):
        v = _first_verdict(m.group(1))
        if v:
            return v
    return _first_verdict(text)


def parse_confidence(text: str) -> float | None:
    """Stated confidence in [0, 1]: 0.9, 90% or 90 (read as a percent), or high/medium/low."""
    m = _CONFIDENCE.search(text)
    if m:
        value = float(m.group(1))
        if m.group(2) or value > 1.0:
            value /= 100.0
        return min(max(value, 0.0), 1.0)
    w = _CONFIDENCE_WORD.search(text)
    return CONFIDENCE_WORDS[w.group(1).lower()] if w else None


# data/README.md's machine-readable convention; `format_ok` reports it, passing does not need it.
_STRICT_VERDICT = re.compile(r"^Verdict: (true|false|partly true|unverifiable)$", re.IGNORECASE)
_STRICT_CONFIDENCE = re.compile(r"^Confidence: (0(\.\d+)?|1(\.0+)?)$", re.IGNORECASE)


@register("oracle")
def check_oracle(answer: str, expect: dict[str, Any]) -> CheckResult:
    expected = normalize_verdict(expect.get("verdict"))
    got = parse_verdict(answer)
    conf = parse_confidence(answer)
    ok = expected is not None and got == expected
    lines = answer.strip().splitlines()
    fmt = (len(lines) >= 2 and _STRICT_VERDICT.match(lines[0].strip()) is not None
           and _STRICT_CONFIDENCE.match(lines[1].strip()) is not None)
    return CheckResult(ok, float(ok), {"verdict": got, "expected": expected, "confidence": conf, "format_ok": fmt})


# ----------------------------------------------------------------------------- dissident

_AGREE = re.compile(
    r"\b(the )?(claim|argument|reasoning|statement|conclusion|it)( \w+)? (holds|stands|is (sound|valid|correct|"
    r"well[- ]supported|reasonable|justified))\b|\bno (real |obvious |significant |major |logical )?"
    r"(flaws?|errors?|fallac(y|ies)|problems?|issues?)\b|\bi (agree|concur)\b|\bholds up\b", re.IGNORECASE)
_DISAGREE = re.compile(
    r"\b(does not|doesn't|do not|fails to) (hold|follow|stand)\b|\b(is|are|seems|appears) (flawed|invalid|wrong|"
    r"incorrect|unsound|unsupported|misleading)\b|\bthe (main |key |central |critical )?(flaw|error|fallacy|"
    r"problem)\b|\bi (disagree|object)\b|\bfallac(y|ious)\b|\bnon sequitur\b", re.IGNORECASE)


def stance(text: str) -> int:
    """Agreement phrases minus disagreement phrases (> 0: the answer says the claim holds)."""
    return len(_AGREE.findall(text)) - len(_DISAGREE.findall(text))


_ASSESSMENT = re.compile(r"^[\s*#_]*assessment[\s*_]*:[\s*_]*(flawed|holds)\b", re.IGNORECASE | re.MULTILINE)


def parse_assessment(text: str) -> str | None:
    """'holds' or 'flawed': the first "Assessment: ..." line, else the sign of `stance`."""
    m = _ASSESSMENT.search(text)
    if m:
        return m.group(1).lower()
    s = stance(text)
    return "holds" if s > 0 else "flawed" if s < 0 else None


@register("dissident")
def check_dissident(answer: str, expect: dict[str, Any]) -> CheckResult:
    assessment = parse_assessment(answer)
    first = answer.strip().splitlines()[0].strip().lower() if answer.strip() else ""
    details: dict[str, Any] = {"assessment": assessment, "format_ok": first in ("assessment: flawed",
                                                                                  "assessment: holds")}
    if expect.get("claim_holds") is True:
        ok = assessment == "holds"
        return CheckResult(ok, float(ok), {**details, "claim_holds": True})
    groups = _groups(expect.get("flaw_keywords"))
    hits = [g[0] for g in groups if any(mentions(answer, k) for k in g)]
    ok = bool(hits) and assessment != "holds"
    score = (len(hits) / len(groups) if groups else 0.0) * (assessment != "holds")
    return CheckResult(ok, score, {**details, "claim_holds": False, "found": hits,
                                   "missing": [g[0] for g in groups if g[0] not in hits]})


# ----------------------------------------------------------------------------- surveyor

CITATION_PATTERNS = [
    re.compile(r"\((?:see |e\.g\.,? )?[A-Z][\w'\-]+(?:\s+(?:et al\.?|and|&)\s*(?:[A-Z][\w'\-]+)?)?,?\s+(?:19|20)\d{2}[a-z]?\)"),
    re.compile(r"\b[A-Z][\w'\-]+\s+et al\.?,?\s*\(?(?:19|20)\d{2}[a-z]?\)?"),
    re.compile(r"\b[A-Z][\w'\-]+\s+(?:and|&)\s+[A-Z][\w'\-]+\s+\((?:19|20)\d{2}[a-z]?\)"),
    re.compile(r"\bdoi:\s*10\.\d{4,9}/\S+|\b10\.\d{4,9}/[-._;()/:A-Za-z0-9]+", re.IGNORECASE),
    re.compile(r"\barXiv:\s*\d{4}\.\d{4,5}", re.IGNORECASE),
]


def find_citations(text: str) -> list[str]:
    """Citation-like spans in `text`, in order of appearance, without duplicates."""
    found: list[tuple[int, str]] = []
    for pat in CITATION_PATTERNS:
        found += [(m.start(), m.group(0).strip()) for m in pat.finditer(text)]
    seen, out = set(), []
    for _, s in sorted(found):
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def has_section(text: str, name: str) -> bool:
    """`name` is a heading: it begins a line (after markdown #, *, -, 1.) and is followed by ':'
    (a markdown '#' heading may omit the colon)."""
    body = _phrase(name).pattern
    colon = re.compile(r"^[\s>*_\-\d.)]*#*[\s*_]*" + body + r"[\s*_]*:", re.IGNORECASE | re.MULTILINE)
    heading = re.compile(r"^\s*#{1,6}\s*[*_]*" + body + r"[\s*_]*$", re.IGNORECASE | re.MULTILINE)
    return colon.search(text) is not None or heading.search(text) is not None


@register("surveyor")
def check_surveyor(answer: str, expect: dict[str, Any]) -> CheckResult:
    """Sections are required. Citations cannot be verified offline, so they are enforced only
    against an explicit allow-list: with `allowed_citations` (or `no_citations: true`) any other
    citation-like span fails the item as invented; without one they are listed as unverified."""
    sections = [str(s) for s in (expect.get("required_sections") or [])]
    present = [s for s in sections if has_section(answer, s)]
    allowed = [str(a) for a in (expect.get("allowed_citations") or [])]
    enforce = bool(allowed) or bool(expect.get("no_citations"))
    cites = [c for c in find_citations(answer) if not any(a.lower() in c.lower() for a in allowed)]
    invented = cites if enforce else []
    ok = len(present) == len(sections) and not invented
    score = (len(present) / len(sections) if sections else 1.0) * (0.5 if invented else 1.0)
    details: dict[str, Any] = {"missing_sections": [s for s in sections if s not in present],
                               "invented_citations": invented, "unverified_citations": [] if enforce else cites}
    if expect.get("mention_any"):  # a soft check: reported, not required
        details["mentions"] = [m for m in map(str, expect["mention_any"]) if mentions(answer, m)]
    return CheckResult(ok, score, details)


# ----------------------------------------------------------------------------- synthesist

MECHANISM_WORDS = ("because", "mechanism", "causes", "caused by", "leads to", "lead to", "drives", "driven by",
                   "via", "through", "by which", "results in", "resulting in", "enables", "due to", "feedback",
                   "mediated", "underlying", "in turn", "which means", "so that", "therefore")


def heading_text(text: str, name: str) -> str | None:
    """The text after a `name` heading (to the next blank line), None if there is no such heading."""
    m = re.search(r"^[\s>*_\-#]*" + _phrase(name).pattern + r"[ \t*_]*:?[ \t*_]*(.*?)(?:\n[ \t]*\n|\Z)",
                  text, re.IGNORECASE | re.MULTILINE | re.DOTALL)
    return m.group(1).strip() if m else None


@register("synthesist")
def check_synthesist(answer: str, expect: dict[str, Any]) -> CheckResult:
    """Every domain named; with `mechanism: true` a non-empty 'Mechanism' section and a non-empty
    'Where it breaks' section (data/README.md), or, lacking headings, a mechanism word in the text
    and 'breaks' somewhere (the free-text fallback scores but does not pass)."""
    domains = _groups(expect.get("domains"))
    hit = [any(mentions(answer, s) for s in g) for g in domains]
    need_mech = bool(expect.get("mechanism", False))
    mech_words = [w for w in MECHANISM_WORDS if _phrase(w).search(answer)]
    mech_head, breaks = heading_text(answer, "Mechanism"), heading_text(answer, "Where it breaks")
    headings = bool(mech_head) and bool(breaks)
    ok = bool(domains) and all(hit) and (headings or not need_mech)
    parts = hit + ([headings or bool(mech_words)] if need_mech else [])
    score = sum(parts) / len(parts) if parts else 0.0
    return CheckResult(ok, score, {"domains_missing": [g[0] for g, h in zip(domains, hit) if not h],
                                   "mechanism_heading": bool(mech_head), "breaks_heading": bool(breaks),
                                   "mechanism_words": mech_words[:5]})
