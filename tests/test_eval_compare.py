"""Paired comparison, verdict lines, diffs against a stored eval, and the report, on synthetic results."""

from __future__ import annotations

import json

import pytest
from scipy import stats as sps

from iceburg_mlx.errors import DataError
from iceburg_mlx.eval import report
from iceburg_mlx.eval.bench import (
    BenchItem,
    BenchResult,
    ItemResult,
    ModelEval,
    item_from_record,
    select_benches,
)
from iceburg_mlx.eval.compare import compare, compare_bench, diff_evals
from iceburg_mlx.eval.stats import bh_adjust, cohens_h, wilson_interval


def result(bench: str, outcomes: list[bool], answers: list[str] | None = None) -> BenchResult:
    answers = answers or [f"answer {i}" for i in range(len(outcomes))]
    return BenchResult(bench, [ItemResult(f"{bench}-{i}", a, ok, float(ok)) for i, (ok, a) in
                               enumerate(zip(outcomes, answers))])


def test_verdict_line_matches_the_issue_format():
    # 100 items: A right on 71, B on 48; discordant pairs 30 (A only) and 7 (B only)
    a = [True] * 41 + [True] * 30 + [False] * 7 + [False] * 22
    b = [True] * 41 + [False] * 30 + [True] * 7 + [False] * 22
    (c,) = compare({"oracle": result("oracle", a)}, {"oracle": result("oracle", b)}, "oracle@3", "base")
    assert (c.counts.only_a, c.counts.only_b, c.n) == (30, 7, 100)
    p = sps.binomtest(7, 37, 0.5).pvalue
    assert c.p == pytest.approx(p) and c.p_bh == pytest.approx(p)  # one bench: BH = p
    lo_a, hi_a = wilson_interval(71, 100)
    lo_b, hi_b = wilson_interval(48, 100)
    assert c.verdict() == (f"oracle@3 vs base on oracle: 71% [{round(100 * lo_a)}-{round(100 * hi_a)}] vs "
                           f"48% [{round(100 * lo_b)}-{round(100 * hi_b)}], McNemar p<0.001 (BH <0.001), h=0.47")
    d = c.to_dict()
    assert d["cohens_h"] == pytest.approx(cohens_h(0.71, 0.48), abs=1e-4) and d["verdict"] == c.verdict()


def test_bh_across_benches_and_p_format():
    a = {"x": result("x", [True] * 6 + [False] * 4), "y": result("y", [True] * 8 + [False] * 2)}
    b = {"x": result("x", [False] * 3 + [True] * 3 + [False] * 4), "y": result("y", [True] * 8 + [False] * 2)}
    cx, cy = compare(a, b, "A", "B")
    assert [cx.p_bh, cy.p_bh] == pytest.approx(bh_adjust([cx.p, cy.p]))
    assert "McNemar p=0.250 (BH 0.500)" in cx.verdict() and cy.p == 1.0 and "h=0.00" in cy.verdict()


def test_compare_needs_the_same_items():
    with pytest.raises(DataError, match="different items"):
        compare_bench(result("x", [True, False]), result("x", [True]), "A", "B")


def record_of(outcomes, answers):
    return report.build_record(ModelEval("m", {"oracle": result("oracle", outcomes, answers)}))


def test_diff_evals_flags_regressed_fixed_drifted():
    prev = record_of([True, False, True, True], ["Verdict: true", "no", "Verdict: false, the moon", "same"])
    cur = record_of([False, True, True, True], ["Verdict: false", "yes", "Something else entirely!", "same"])
    changes = {c["id"]: c["change"] for c in diff_evals(prev, cur)}
    assert changes == {"oracle-0": "regressed", "oracle-1": "fixed", "oracle-2": "drifted"}
    assert diff_evals(prev, prev) == []


def test_record_and_markdown_and_eval_json(tmp_path, monkeypatch):
    a = ModelEval("adapter", {"oracle": result("oracle", [True, True, False])})
    b = ModelEval("base", {"oracle": result("oracle", [False, True, False])})
    comps = compare(a, b)
    rec = report.build_record(a, b, comps, {"seed": 0, "max_tokens": 8, "n": 3})
    json.dumps(rec)  # JSON-able
    assert rec["verdicts"] == [comps[0].verdict()] and rec["schema"] == report.SCHEMA
    rows = report.summary_rows(rec)
    assert [(r["bench"], r["model"]) for r in rows] == [("oracle", "adapter"), ("oracle", "base")]
    # without matplotlib the chart is skipped with a note
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    paths = report.write_report(tmp_path, rec)
    assert "chart" not in paths and not (tmp_path / report.CHART_PNG).exists()
    md = (tmp_path / report.REPORT_MD).read_text()
    assert "| oracle | adapter | 3 | 67% |" in md and comps[0].verdict() in md and "matplotlib is not installed" in md
    assert report.read_eval_json(tmp_path) == json.loads((tmp_path / "eval.json").read_text())
    assert report.read_eval_json(tmp_path / "nothing") is None
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries


def test_item_from_record_formats():
    it = item_from_record({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                        {"role": "assistant", "content": "a"}], "expect": {"verdict": "true"}},
                          "oracle", "x")
    assert isinstance(it, BenchItem) and [m["role"] for m in it.prompt] == ["system", "user"]
    assert it.reference == "a" and it.conversation()[-1]["content"] == "a" and it.id == "x"
    it = item_from_record({"prompt": "q", "id": 7}, "general", "x")
    assert it.prompt == [{"role": "user", "content": "q"}] and it.reference is None and it.id == "7"
    assert item_from_record({"prompt": "q", "completion": "a"}, "general", "x").reference == "a"
    with pytest.raises(DataError):
        item_from_record({"expect": {}}, "general", "x")
    with pytest.raises(DataError):
        item_from_record({"prompt": "q", "expect": [1]}, "general", "x")


def test_select_benches(tmp_path):
    with pytest.raises(DataError, match="no <bench>/eval.jsonl"):
        select_benches("all", tmp_path)
    (tmp_path / "general").mkdir()
    (tmp_path / "general" / "eval.jsonl").write_text('{"prompt": "hi", "expect": {"max_words": 3}}\n')
    assert select_benches("all", tmp_path) == ["general"]
    assert select_benches("oracle", tmp_path) == ["oracle"]
