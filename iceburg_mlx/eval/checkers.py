"""Answer checkers, one per bench: (answer text, expect dict) -> CheckResult(passed, score, details).

Each role bench's eval.jsonl records carry an `expect` dict (schema in data/README.md); missing
optional keys are skipped, not failed. The checks are deliberately simple, documented heuristics:

- oracle: the verdict (true | false | partly true | unverifiable) from a "Verdict: ..." line, else
  a "the claim is ..." phrase, else the first verdict phrase in the text; the stated confidence
  ("Confidence: 0.9", "90%", or high / medium / low = 0.9 / 0.6 / 0.3) is kept for calibration;
  `format_ok` says whether the first two lines follow the strict data/README.md convention.
- dissident: the assessment is the "Assessment: holds|flawed" line, else the sign of agreement
  minus disagreement phrases. A flawed claim passes when a planted-flaw keyword is named (any of
  `flaw_keywords`, case-insensitive substrings such as "extrapolat"; an inner list is a group of
  synonyms) and the answer does not assess it as holding; a sound claim (`claim_holds: true`)
  passes when the assessment is "holds".
- surveyor: every `required_sections` name is a heading ("Known:" at a line start, markdown
  allowed). Citation-like text ("(Smith, 2019)", "Smith et al. 2019", DOIs, arXiv ids) fails the
  item as invented only against an explicit `allowed_citations` list (or `no_citations: true`);
  otherwise it is listed as unverified. `mention_any` is reported, not required.
- synthesist: each domain (a list of synonyms) is mentioned, and with `mechanism: true` the answer
  has non-empty "Mechanism" and "Where it breaks" sections (data/README.md's convention).
- general: every key of data/README.md's table (words, sentences, json + json_keys, numbered /
  bullet lists + min/max_items, language by a stop-word detector, must(-not)-include, starts /
  ends_with, all_lower/uppercase, no_commas, num_paragraphs, num_lines) on the stripped reply.

Template contamination: `template_markers(text)` lists raw chat-template markers in an answer;
`check_contamination` is the checker for the sentinel prompts run by `bench.contamination_probe`.
"""

from __future__ import annotations

import json
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


# ----------------------------------------------------------------------------- general

STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the and of to in is that it for with as was on are be this by not or have from but which you".split()),
    "fr": frozenset("le la les et des est un une du que qui dans pour pas sur au ce il elle nous vous sont avec".split()),
    "es": frozenset("el la los las y de que en es un una por con para no se del al lo como más pero sus".split()),
    "de": frozenset("der die das und ist nicht ein eine zu den von mit sich des auf für im dem auch es sie".split()),
    "it": frozenset("il lo la gli le e di che è un una per non con del della sono si nel anche come ma".split()),
    "pt": frozenset("o a os as e de que em um uma para com não se do da no na por mais como mas".split()),
    "nl": frozenset("de het een en van is dat niet op te in zijn met voor er maar ook als bij aan".split()),
}
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


def detect_language(text: str) -> str | None:
    """The language whose stop words cover most of the text's words (None under 3 stop words)."""
    words = [w.lower() for w in _WORD.findall(text)]
    counts = {lang: sum(w in sw for w in words) for lang, sw in STOPWORDS.items()}
    lang, best = max(counts.items(), key=lambda kv: kv[1])
    return lang if best >= 3 else None


def count_words(text: str) -> int:
    return len(text.split())


def count_sentences(text: str) -> int:
    """Sentences: split on [.!?]+ followed by whitespace or the end (data/README.md), non-empty."""
    return sum(1 for p in re.split(r"[.!?]+(?:\s+|$)", text.strip()) if p.strip())


def parse_json_answer(text: str) -> Any:
    """The answer as JSON, allowing a ```json fence around it; raises ValueError if it is not."""
    t = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", t, re.DOTALL | re.IGNORECASE)
    if fence:
        t = fence.group(1)
    return json.loads(t)


def list_items(text: str, numbered: bool = True) -> int:
    pat = r"^\s*\d+[.)]\s+\S" if numbered else r"^\s*[-*•]\s+\S"
    return len(re.findall(pat, text, re.MULTILINE))


def _check_format(answer: str, expect: dict[str, Any]) -> dict[str, Any]:
    fmt = str(expect["format"]).lower()
    if fmt == "json":
        try:
            obj = parse_json_answer(answer)
        except ValueError as e:
            return {"ok": False, "error": f"not JSON: {str(e)[:60]}"}
        keys = [str(k) for k in (expect.get("json_keys") or [])]
        objs = obj if isinstance(obj, list) else [obj]   # an array: every object needs the keys
        missing = [k for k in keys if not objs or not all(isinstance(o, dict) and k in o for o in objs)]
        return {"ok": not missing, "missing_keys": missing}
    if fmt in ("numbered_list", "bullet_list"):
        n = list_items(answer, numbered=fmt == "numbered_list")
        need = int(expect.get("min_items", 2))
        out: dict[str, Any] = {"ok": n >= need, "items": n, "min_items": need}
        if "max_items" in expect:
            out["ok"] = out["ok"] and n <= int(expect["max_items"])
        return out
    return {"ok": None, "error": f"unknown format {fmt!r} (not checked)"}


def _blocks(text: str) -> int:
    return sum(1 for b in re.split(r"\n\s*\n", text) if b.strip())


def _general_checks(answer: str, expect: dict[str, Any]) -> dict[str, dict[str, Any]]:
    answer = answer.strip()
    checks: dict[str, dict[str, Any]] = {}
    if "min_sentences" in expect:
        n = count_sentences(answer)
        checks["min_sentences"] = {"ok": n >= int(expect["min_sentences"]), "sentences": n}
    if "starts_with" in expect:
        alts = [expect["starts_with"]] if isinstance(expect["starts_with"], str) else expect["starts_with"]
        checks["starts_with"] = {"ok": any(answer.lower().startswith(str(a).lower()) for a in alts)}
    if "ends_with" in expect:
        tail = answer.rstrip(" \t\n.,;:!?\"'”’)»").lower()
        checks["ends_with"] = {"ok": tail.endswith(str(expect["ends_with"]).lower())}
    if expect.get("all_lowercase"):
        checks["all_lowercase"] = {"ok": answer == answer.lower()}
    if expect.get("all_uppercase"):
        checks["all_uppercase"] = {"ok": answer == answer.upper()}
    if expect.get("no_commas"):
        checks["no_commas"] = {"ok": "," not in answer}
    if "num_paragraphs" in expect:
        n = _blocks(answer)
        checks["num_paragraphs"] = {"ok": n == int(expect["num_paragraphs"]), "paragraphs": n}
    if "num_lines" in expect:
        n = sum(1 for line in answer.splitlines() if line.strip())
        checks["num_lines"] = {"ok": n == int(expect["num_lines"]), "lines": n}
    if "max_words" in expect:
        n = count_words(answer)
        checks["max_words"] = {"ok": n <= int(expect["max_words"]), "words": n}
    if "min_words" in expect:
        n = count_words(answer)
        checks["min_words"] = {"ok": n >= int(expect["min_words"]), "words": n}
    if "max_sentences" in expect:
        n = count_sentences(answer)
        checks["max_sentences"] = {"ok": n <= int(expect["max_sentences"]), "sentences": n}
    if "format" in expect:
        checks["format"] = _check_format(answer, expect)
    if "language" in expect:
        lang = detect_language(answer)
        checks["language"] = {"ok": lang == str(expect["language"]).lower(), "detected": lang}
    if "must_include" in expect:
        missing = [s for s in _groups(expect["must_include"]) if not any(mentions(answer, k) for k in s)]
        checks["must_include"] = {"ok": not missing, "missing": [g[0] for g in missing]}
    if "must_not_include" in expect:
        found = [k for g in _groups(expect["must_not_include"]) for k in g if mentions(answer, k)]
        checks["must_not_include"] = {"ok": not found, "found": found}
    return checks


@register("general")
def check_general(answer: str, expect: dict[str, Any]) -> CheckResult:
    """Every constraint present in `expect` must hold; the score is the fraction that hold."""
    checks = _general_checks(answer, expect)
    judged = [c["ok"] for c in checks.values() if c["ok"] is not None]
    ok = bool(judged) and all(judged)
    return CheckResult(ok, sum(judged) / len(judged) if judged else 0.0, checks)


# ----------------------------------------------------------------------------- contamination

TEMPLATE_MARKERS = ("<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
                    "<|begin_of_text|>", "<|endoftext|>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>",
                    "<start_of_turn>", "<end_of_turn>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>",
                    "### Instruction:", "### Response:")
# In completion mode a base model must not drift into a chat transcript either.
ROLE_LINES = re.compile(r"^\s*(user|assistant|system|human|gpt)\s*:", re.IGNORECASE | re.MULTILINE)

SENTINEL_PROMPTS = {
    "chat": ["Say hello in one short sentence.", "What is 2 + 2? Answer with a number.",
             "Name one colour of the sky."],
    "completion": ["The capital of France is", "Once upon a time, in a small village,",
                   "def add(a, b):\n    return"],
}


def template_markers(text: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The raw chat-template markers that occur in `text`."""
    return [m for m in (*TEMPLATE_MARKERS, *extra) if m in text]


@register("contamination")
def check_contamination(answer: str, expect: dict[str, Any]) -> CheckResult:
    """Passes when the answer holds no template marker (nor, in completion mode, role lines)."""
    markers = template_markers(answer, tuple(expect.get("markers") or ()))
    roles = ROLE_LINES.findall(answer) if expect.get("mode") == "completion" else []
    ok = not markers and not roles
    return CheckResult(ok, float(ok), {"markers": markers, "role_lines": [r for r in roles]})
