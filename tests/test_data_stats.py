"""Stats: counts, token percentiles, histograms, duplicate and template fractions, the --json CLI."""

from __future__ import annotations

import json

from iceburg_mlx.data import synthetic
from iceburg_mlx.data.io import write_jsonl
from iceburg_mlx.data.stats import compute_stats, estimate_tokens


def test_stats_counts_and_fractions(tmp_path):
    recs, _ = synthetic.near_duplicate_corpus(90, 10, seed=4)
    for i, r in enumerate(recs):
        r["quality_score"] = (i % 10) / 10 + 0.05
    p = tmp_path / "a.jsonl"
    write_jsonl(p, recs + [{"prompt": "p", "completion": "c"}])
    with open(p, "ab") as f:
        f.write(b"{broken\n")
    rep = compute_stats([p])
    assert rep.records == 102 and rep.errors == 1
    assert rep.formats == {"chatml": 100, "completion": 1}
    assert rep.roles["user"] == 101 and rep.roles["assistant"] == 101
    assert 0.09 <= rep.near_duplicate_fraction <= 0.11
    assert rep.score_histograms["quality_score"] == [10] * 10
    assert rep.token_percentiles["p50"] <= rep.token_percentiles["p90"] <= rep.token_percentiles["max"]
    assert rep.template_fraction < 0.1


def test_estimate_tokens():
    assert estimate_tokens("") == 0 and estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2


def test_cli_stats_json(tmp_path):
    from typer.testing import CliRunner

    from iceburg_mlx.cli.main import app

    p = tmp_path / "t.jsonl"
    write_jsonl(p, synthetic.template_corpus(60))
    r = CliRunner().invoke(app, ["data", "stats", str(p), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["records"] == 60 and d["errors"] == 0
    assert d["template_fraction"] >= 0.9 and "near_duplicate_fraction" in d
    r = CliRunner().invoke(app, ["data", "stats", str(p)])
    assert r.exit_code == 0 and "template fraction" in r.output
