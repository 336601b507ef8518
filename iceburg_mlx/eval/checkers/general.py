"""The general (instruction-following) checker and the template-contamination checker."""

from __future__ import annotations

import json
import re
from typing import Any

from iceburg_mlx.eval.checkers.base import CheckResult, _groups, mentions, register


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
