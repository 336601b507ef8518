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

from iceburg_mlx.eval.checkers.base import (
    CHECKERS,
    Checker,
    CheckResult,
    get_checker,
    mentions,
    register,
)
from iceburg_mlx.eval.checkers.general import (
    ROLE_LINES,
    SENTINEL_PROMPTS,
    STOPWORDS,
    TEMPLATE_MARKERS,
    check_contamination,
    check_general,
    count_sentences,
    count_words,
    detect_language,
    list_items,
    parse_json_answer,
    template_markers,
)
from iceburg_mlx.eval.checkers.roles import (
    CITATION_PATTERNS,
    CONFIDENCE_WORDS,
    MECHANISM_WORDS,
    VERDICTS,
    check_dissident,
    check_oracle,
    check_surveyor,
    check_synthesist,
    find_citations,
    has_section,
    heading_text,
    normalize_verdict,
    parse_assessment,
    parse_confidence,
    parse_verdict,
    stance,
)

__all__ = [
    "CHECKERS",
    "Checker",
    "STOPWORDS",
    "CITATION_PATTERNS",
    "CONFIDENCE_WORDS",
    "CheckResult",
    "MECHANISM_WORDS",
    "ROLE_LINES",
    "SENTINEL_PROMPTS",
    "TEMPLATE_MARKERS",
    "VERDICTS",
    "check_contamination",
    "check_dissident",
    "check_general",
    "check_oracle",
    "check_surveyor",
    "check_synthesist",
    "count_sentences",
    "count_words",
    "detect_language",
    "find_citations",
    "get_checker",
    "has_section",
    "heading_text",
    "list_items",
    "mentions",
    "normalize_verdict",
    "parse_assessment",
    "parse_confidence",
    "parse_json_answer",
    "parse_verdict",
    "register",
    "stance",
    "template_markers",
]
