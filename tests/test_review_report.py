"""The review report: preference counts, win rate, sign test, kappa and alpha, position bias, rubric
means, the markdown and chart, and the DPO pairs, on judgments whose numbers are derived by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from review_fixtures import judge, synthetic_store
from scipy import stats as sps

from iceburg_mlx.data.formats import preference_parts
from iceburg_mlx.data.validate import validate_file
from iceburg_mlx.review.report import analyze, render_markdown, write_pairs, write_report
from iceburg_mlx.review.stats import wilson_interval

ALICE = ["B", "B", "B", "A", "tie", "B", "A", "B"]      # items 0-7
BOB = ["B", "A", "B", "A", "B", "tie"]                  # items 0-5


@pytest.fixture
def store(tmp_path):
    s = synthetic_store(tmp_path / "s.db", n=9, same=(8,))
    for i, p in enumerate(ALICE):
        judge(s, "alice", i, p, score_a=2, score_b=4, comment="clearer" if i == 0 else "")
    for i, p in enumerate(BOB):
        judge(s, "bob", i, p, score_a=3, score_b=3)
    return s


def test_preferences_win_rate_and_sign_test(store):
    r = analyze(store)
    p = r["preferences"]
    assert (p["n"], p["a"], p["ties"], p["b"]) == (14, 4, 2, 8)
    assert p["b_win_rate"] == pytest.approx(8 / 12, abs=1e-4)
    assert p["ci95"] == pytest.approx(list(wilson_interval(8, 12)), abs=1e-4)
    assert p["sign_p"] == pytest.approx(sps.binomtest(8, 12, 0.5).pvalue)
    # per item, the raters' majority: B, tie (B vs A), B, A, B (tie + B), B (B + tie), A, B
    q = r["per_item"]
    assert (q["n"], q["a"], q["ties"], q["b"]) == (8, 2, 1, 5)
    assert (r["judgments"], r["items_judged"], r["identical_answers"]) == (14, 8, 1)


def test_agreement_kappa_by_hand_and_alpha(store):
    ag = analyze(store)["agreement"]
    # items 0-5: alice B B B A tie B, bob B A B A B tie: p_o = 3/6; p_e = (4*3 + 1*2 + 1*1) / 36 = 15/36
    # kappa = (1/2 - 15/36) / (1 - 15/36) = 3/21
    assert ag["raters"] == 2 and ag["kappa"] == {"n": 6, "value": pytest.approx(1 / 7, abs=1e-4)}
    assert ag["alpha_preference"]["n"] == 6
    assert -1 < ag["alpha_preference"]["value"] < 1
    # scores of items 0-5: 6 units (A) hold {2, 3}, 6 units (B) hold {4, 3}: n = 24, D_o = 24 / 24 = 1,
    # D_e = 2 (6*12*1 + 12*6*1 + 6*6*4) / (24*23) = 576/552, alpha = 1 - 552/576 = 1/24
    assert ag["alpha_criteria"]["verdict"] == pytest.approx(1 / 24, abs=1e-4)
    judge(store, "carol", 0, "B")
    three = analyze(store)["agreement"]
    assert three["raters"] == 3 and "kappa" not in three and three["alpha_preference"]["value"] is not None


def test_rubric_means_and_position_bias(store):
    r = analyze(store)
    a = np.array([2] * 8 + [3] * 6, float)
    b = np.array([4] * 8 + [3] * 6, float)
    verdict = next(c for c in r["criteria"] if c["key"] == "verdict")
    assert verdict["a"]["mean"] == pytest.approx(a.mean(), abs=1e-4)
    assert verdict["b"]["mean"] == pytest.approx(b.mean(), abs=1e-4)
    lo, hi = sps.t.interval(0.95, 13, loc=(b - a).mean(), scale=sps.sem(b - a))
    assert verdict["b_minus_a"]["ci95"] == pytest.approx([lo, hi], abs=1e-4)
    prefs = {("alice", i): p for i, p in enumerate(ALICE)} | {("bob", i): p for i, p in enumerate(BOB)}
    first = sum((p == "A") == store.item(i).a_first for (_, i), p in prefs.items() if p != "tie")
    pos = r["position"]
    assert (pos["first"], pos["second"]) == (first, 12 - first)
    assert pos["sign_p"] == pytest.approx(sps.binomtest(first, 12, 0.5).pvalue)
    assert [x["rater"] for x in r["raters"]] == ["alice", "bob"] and r["raters"][0]["b"] == 5


def test_markdown_and_chart(store, tmp_path):
    record, paths = write_report(store, tmp_path / "report")
    md = paths["report"].read_text()
    assert md.startswith("# Blind review: oracle@3 (A) vs oracle@4 (B) on oracle")
    assert "B preferred in 67% [39%-86%] of 12 decided (A 4, ties 2, B 8)" in md
    assert "Cohen's kappa on preferences: 0.143 over 6 items rated by both" in md
    assert "| per item (raters' majority) | 8 | 2 | 1 | 5 |" in md
    assert "- alice on oracle-eval-000 (preferred B): clearer" in md
    assert "![preferences and rubric](review.png)" in md
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["record"].read_text())["preferences"] == record["preferences"]
    assert "One rater" in render_markdown(analyze(synthetic_store(tmp_path / "empty.db", n=3)))


def test_dpo_pairs_drop_ties_and_identical_answers(store, tmp_path):
    judge(store, "alice", 8, "A")                            # item 8: both sides gave the same answer
    n = write_pairs(store, tmp_path / "pairs.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert n == len(rows) == 12                               # 15 judgments - 2 ties - 1 identical
    for row in rows:
        prov, item = row["provenance"], row["provenance"]["item"]
        i = int(item.rsplit("-", 1)[1])
        winner = (ALICE if prov["rater"] == "alice" else BOB)[i]
        assert (row["chosen"], row["rejected"]) == ((f"A answer {i}", f"B answer {i}") if winner == "A"
                                                    else (f"B answer {i}", f"A answer {i}"))
        assert prov["session"] == "synthetic0" and prov["chosen_side"] == winner
        assert prov["chosen_model"] == {"A": "oracle@3", "B": "oracle@4"}[winner]
        prompt, chosen, rejected = preference_parts(row)
        assert prompt == row["messages"] and prompt[0]["role"] == "system" and chosen != rejected
    report = validate_file(tmp_path / "pairs.jsonl", template_threshold=None)
    assert report.ok and report.formats == {"preference": 12}, [str(p) for p in report.problems]
