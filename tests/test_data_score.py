"""Quality scoring: features move the right way, role rules fire, the file writer keeps fields."""

from __future__ import annotations

import pytest

from iceburg_mlx.data.io import iter_jsonl, write_jsonl
from iceburg_mlx.data.score import combine, features, score_file, score_record
from iceburg_mlx.errors import ConfigError

GOOD = ("Tokamaks confine plasma with magnetic fields; confinement time scales roughly with machine size, "
        "which is why ITER is large. Stellarators avoid plasma current disruptions at the cost of complex coils. "
        "Recent results from Wendelstein 7-X show improved confinement.")


def rec(answer: str, **extra):
    return {"messages": [{"role": "user", "content": "Explain fusion confinement."},
                         {"role": "assistant", "content": answer}], **extra}


def test_good_answer_scores_high_and_breakdown_is_given():
    s, f = score_record(rec(GOOD))
    assert s >= 0.9 and set(f) >= {"length", "diversity", "repetition", "boilerplate", "refusal", "contamination", "truncation"}


@pytest.mark.parametrize("bad,feature", [
    ("Yes.", "length"),
    (" ".join(["the plasma is hot"] * 40) + ".", "repetition"),
    ("As an AI language model, I cannot help with that request about fusion devices and plasma physics today.", "refusal"),
    (GOOD + "\nUser: and now?\nAssistant: sure", "contamination"),
    (GOOD + " <|im_end|>", "contamination"),
    (GOOD + " and then the magnetic field lines of the", "truncation"),
    ("The field of fusion has seen significant advances. Core principles are now well-established. "
     "It is important to note that further research is needed. In conclusion, it plays a crucial role.", "boilerplate"),
])
def test_each_defect_lowers_its_feature_and_the_score(bad, feature):
    s_bad, f_bad = score_record(rec(bad))
    s_good, f_good = score_record(rec(GOOD))
    assert f_bad[feature] < f_good[feature]
    assert s_bad < s_good


@pytest.mark.parametrize("role,yes,no", [
    ("dissident", "However, the claim is overstated because the studies ignore selection effects.",
     "Fusion is a promising energy source that many labs pursue."),
    ("oracle", "Verdict: the claim is supported. Confidence: 80%.", "There are many views on this topic to consider."),
    ("surveyor", "Smith et al. (2021) measured it; an open question is whether it scales.",
     "Fusion is a topic with many aspects that people study."),
    ("synthesist", "Ecology and economics share a mechanism: feedback loops drive boom and bust in both.",
     "Ecology is interesting. Economics is also interesting."),
])
def test_role_rules(role, yes, no):
    assert features(yes, role)["role"] == 1.0
    assert features(no, role)["role"] <= 0.5
    assert score_record(rec(yes), role)[0] > score_record(rec(no), role)[0]


def test_role_from_meta_and_unknown_role():
    r = rec("Verdict: true. Confidence: high certainty.", meta={"role": "oracle"})
    assert "role" in score_record(r)[1]
    with pytest.raises(ConfigError, match="supported: dissident"):
        features("x", "poet")


def test_combine_is_bounded():
    f = dict.fromkeys(["length", "diversity", "repetition", "boilerplate", "truncation", "refusal", "contamination"], 1.0)
    assert combine(f) == 1.0
    assert combine({**f, "refusal": 0.0}) == 0.2


def test_score_file_keeps_fields_and_filters(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, [rec(GOOD, id="g", meta={"x": 1}), rec("Yes", id="b")])
    rep = score_file(src, out, min_quality=0.5)
    rows = [r for _, r in iter_jsonl(out)]
    assert rep.records == 2 and rep.kept == 1 and [r["id"] for r in rows] == ["g"]
    assert rows[0]["meta"] == {"x": 1} and 0 <= rows[0]["quality_score"] <= 1
    assert "quality_features" in rows[0] and sum(rep.histogram) == 2
