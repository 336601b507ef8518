"""Each bench checker on answers that should pass and answers that should fail."""

from __future__ import annotations

import pytest

from iceburg_mlx.errors import ConfigError
from iceburg_mlx.eval.checkers import (
    CHECKERS,
    count_sentences,
    detect_language,
    find_citations,
    get_checker,
    parse_confidence,
    parse_verdict,
    template_markers,
)


def check(bench, answer, expect):
    return get_checker(bench)(answer, expect)


def test_registry():
    assert {"oracle", "dissident", "surveyor", "synthesist", "general", "contamination"} <= set(CHECKERS)
    with pytest.raises(ConfigError, match="supported: .*oracle"):
        get_checker("nope")


# ----------------------------------------------------------------------------- oracle

@pytest.mark.parametrize("text,verdict", [
    ("Verdict: false\nConfidence: 0.9", "false"),
    ("**Verdict:** Partly true. The first half holds.", "partly true"),
    ("Verdict - UNVERIFIABLE", "unverifiable"),
    ("Verdict: True", "true"),
    ("The claim is not true: the moon has no atmosphere to speak of.", "false"),
    ("This is partially correct, but the date is wrong.", "partly true"),
    ("There is insufficient evidence to say either way.", "unverifiable"),
    ("Yes, that is correct.", "true"),
    ("The claim is not entirely true. Some say it is true.", "partly true"),
    ("People say so and it sounds correct, but the claim is false.", "false"),
    ("I like turtles.", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize("text,conf", [
    ("Confidence: 0.9", 0.9), ("confidence: 85%", 0.85), ("Confidence: 70", 0.7),
    ("**Confidence**: high", 0.9), ("Confidence is low", 0.3), ("no number here", None),
])
def test_parse_confidence(text, conf):
    got = parse_confidence(text)
    assert got == (pytest.approx(conf) if conf is not None else None)


def test_oracle_pass_and_fail():
    ok = check("oracle", "Verdict: false\nConfidence: 0.9\nThe sun does not orbit the earth.", {"verdict": "false"})
    assert ok.passed and ok.score == 1.0 and ok.details["confidence"] == 0.9
    bad = check("oracle", "Verdict: true\nConfidence: 0.6", {"verdict": "false"})
    assert not bad.passed and bad.score == 0.0 and bad.details["verdict"] == "true"
    assert check("oracle", "Verdict: mostly true", {"verdict": "Partly True"}).passed  # label normalised
    assert not check("oracle", "Verdict: true", {}).passed  # no expected verdict: cannot pass


# ----------------------------------------------------------------------------- dissident

def test_dissident_flaw_found_and_missed():
    expect = {"flaw_keywords": ["correlation", ["causation", "causal"]], "claim_holds": False}
    hit = check("dissident", "The argument confuses correlation with a causal link.", expect)
    assert hit.passed and hit.score == 1.0
    half = check("dissident", "It rests on a mere correlation.", expect)
    assert half.passed and half.score == 0.5 and half.details["missing"] == ["causation"]
    miss = check("dissident", "The claim holds; I see nothing wrong.", expect)
    assert not miss.passed and miss.score == 0.0


def test_dissident_assessment_line():
    flawed = {"flaw_keywords": ["extrapolat", "base rate"], "claim_holds": False}
    r = check("dissident", "Assessment: flawed\nSteelman: ...\nIt extrapolates a trend.", flawed)
    assert r.passed and r.details["format_ok"] and r.details["assessment"] == "flawed"
    r = check("dissident", "Assessment: holds\nIt extrapolates, but fine.", flawed)  # keyword, wrong call
    assert not r.passed and r.score == 0.0
    holds = {"flaw_keywords": [], "claim_holds": True}
    assert check("dissident", "**Assessment:** holds\nSteelman: the main flaw would be...", holds).passed
    assert not check("dissident", "Assessment: flawed\nNo flaw here, I agree.", holds).passed


def test_dissident_sound_claim():
    expect = {"flaw_keywords": [], "claim_holds": True}
    assert check("dissident", "I looked hard: the claim holds and there is no flaw in the reasoning.", expect).passed
    assert not check("dissident", "The main flaw is a fallacy: the conclusion does not follow.", expect).passed
    assert not check("dissident", "Hmm.", {"claim_holds": True}).passed


# ----------------------------------------------------------------------------- surveyor

def test_surveyor_sections():
    expect = {"required_sections": ["Known", "Sources", "Open questions", "Confidence"],
              "mention_any": ["Kahneman", "nobody"]}
    good = ("Known:\n- a\n\n**Sources:** Kahneman & Tversky 1979\n\n## Open questions\n- c\n\n"
            "Confidence: moderate, because b.")
    r = check("surveyor", good, expect)
    assert r.passed and r.score == 1.0 and r.details["mentions"] == ["Kahneman"]
    r = check("surveyor", "Known: x\nThe open questions are many; sources vary.", expect)  # mid-line: no heading
    assert not r.passed and r.details["missing_sections"] == ["Sources", "Open questions", "Confidence"]
    assert not check("surveyor", "Known\nSources\nOpen questions\nConfidence", expect).passed  # no colons


def test_surveyor_invented_citations():
    text = "Known: as shown (Smith, 2019) and by Lee et al. (2021), see doi:10.1000/xyz123."
    strict = {"required_sections": ["Known"], "no_citations": True}
    r = check("surveyor", text, strict)
    assert not r.passed and r.score == 0.5 and len(r.details["invented_citations"]) == 3
    allowed = {"required_sections": ["Known"], "allowed_citations": ["Smith, 2019"]}
    assert check("surveyor", "Known: (Smith, 2019).", allowed).passed
    r = check("surveyor", text, allowed)
    assert not r.passed and r.details["invented_citations"] == ["Lee et al. (2021)", "doi:10.1000/xyz123."]
    # without an allow-list citations cannot be verified offline: listed, not failed
    r = check("surveyor", text, {"required_sections": ["Known"]})
    assert r.passed and len(r.details["unverified_citations"]) == 3
    assert find_citations("In 2019 the field grew; arXiv:2101.00001 too.") == ["arXiv:2101.00001"]
    assert find_citations("No references (none needed, 3 points).") == []


# ----------------------------------------------------------------------------- synthesist

def test_synthesist():
    expect = {"domains": [["immunolog", "immune"], ["cryptography", "encryption"]], "mechanism": True}
    good = ("Immune memory resembles key rotation in encryption.\n\nMechanism: memory cells map onto cached "
            "keys because both adapt via feedback.\n\n**Where it breaks:** keys do not mutate.")
    r = check("synthesist", good, expect)
    assert r.passed and r.score == 1.0 and r.details["mechanism_heading"] and r.details["breaks_heading"]
    words_only = check("synthesist", "Immunology and encryption both adapt because of feedback.", expect)
    assert not words_only.passed and words_only.score == 1.0 and "because" in words_only.details["mechanism_words"]
    no_mech = check("synthesist", "The immune system and cryptography are both interesting.", expect)
    assert not no_mech.passed and no_mech.score == pytest.approx(2 / 3)
    empty = check("synthesist", "immune, encryption\nMechanism:\n\nWhere it breaks: here", expect)
    assert not empty.passed  # an empty Mechanism section does not count
    one_domain = check("synthesist", good.replace("encryption", "cooking"), expect)
    assert not one_domain.passed and one_domain.details["domains_missing"] == ["cryptography"]
    assert check("synthesist", "immune and encryption", {"domains": [["immune"], ["encryption"]]}).passed


# ----------------------------------------------------------------------------- general

@pytest.mark.parametrize("expect,good,bad", [
    ({"max_words": 5}, "Hello there, friend.", "This answer is far too long to pass."),
    ({"max_sentences": 2}, "One. Two!", "One. Two. Three?"),
    ({"format": "json", "json_keys": ["name", "age"]}, '```json\n{"name": "x", "age": 3}\n```', '{"name": "x"}'),
    ({"format": "json"}, "[1, 2]", "name: x"),
    ({"format": "numbered_list", "min_items": 3}, "1. a\n2. b\n3) c", "1. a\n2. b\n- c"),
    ({"language": "fr"}, "Le chat est sur la table et il dort dans le salon.", "The cat is on the table and it sleeps."),
    ({"must_include": ["Paris", ["France", "French"]]}, "Paris is the French capital.", "Paris is big."),
    ({"must_not_include": ["as an AI"]}, "Sure: four.", "As an AI, I think four."),
    ({"max_words": 10, "must_include": ["four"]}, "It is four.", "It is five."),
    ({"min_sentences": 2}, "One. Two.", "Just one"),
    ({"format": "json", "json_keys": ["k"]}, '[{"k": 1}, {"k": 2}]', '[{"k": 1}, {"j": 2}]'),
    ({"format": "bullet_list", "min_items": 2, "max_items": 3}, "- a\n* b", "- a\n- b\n- c\n- d"),
    ({"starts_with": ["Yes", "No"]}, "  yes, indeed", "Maybe yes"),
    ({"ends_with": "done"}, "We are done!\"", "Done, we are"),
    ({"all_lowercase": True}, "all quiet", "All quiet"),
    ({"all_uppercase": True}, "LOUD", "LOUd"),
    ({"no_commas": True}, "no commas here", "a, b"),
    ({"num_paragraphs": 2}, "one\n\ntwo", "one\ntwo"),
    ({"num_lines": 2}, "a\n\nb", "a\nb\nc"),
    ({"must_not_include": ["!"]}, "Calm.", "Wow!"),
])
def test_general_pass_and_fail(expect, good, bad):
    g, b = check("general", good, expect), check("general", bad, expect)
    assert g.passed and g.score == 1.0, g.details
    assert not b.passed and b.score < 1.0, b.details


def test_general_tolerates_unknown_format_and_empty_expect():
    r = check("general", "anything", {"format": "haiku", "max_words": 3})
    assert r.passed and r.details["format"]["ok"] is None
    assert not check("general", "anything", {}).passed


def test_language_detector_and_sentences():
    assert detect_language("Der Hund ist nicht in dem Haus und die Katze auch nicht.") == "de"
    assert detect_language("El perro no está en la casa y el gato tampoco.") == "es"
    assert detect_language("ok") is None
    assert count_sentences("Dr. Who? Yes.  New paragraph") == 4  # the README's splitter: "Dr." ends one
    assert count_sentences("v1.2 is out... really!") == 2
    assert count_sentences("") == 0


# ----------------------------------------------------------------------------- contamination

def test_contamination_markers():
    assert template_markers("fine answer") == []
    assert template_markers("hi<|im_end|>\n<|im_start|>user") == ["<|im_start|>", "<|im_end|>"]
    assert check("contamination", "Hello!", {"mode": "chat"}).passed
    assert not check("contamination", "Hello! [INST] more [/INST]", {"mode": "chat"}).passed
    assert not check("contamination", "Paris.<|eot_id|>", {"mode": "completion"}).passed
    # a base model drifting into a transcript in completion mode
    r = check("contamination", " Paris.\nUser: and Spain?\nAssistant: Madrid.", {"mode": "completion"})
    assert not r.passed and r.details["role_lines"]
    assert check("contamination", " Paris.\nUser: and Spain?", {"mode": "chat"}).passed
