"""Best-of-N preference pairs: scoring, the margin threshold, hard negatives, the CLI on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from iceburg_mlx.data.bon import (
    PERTURBATIONS,
    best_of_n_pairs,
    perturb,
)
from iceburg_mlx.data.formats import split_prompt
from iceburg_mlx.data.score import score_record
from iceburg_mlx.errors import ConfigError, DataError

GOOD = ("Verdict: false\nConfidence: 0.9\n\nThe claim is not supported: controlled studies found no effect, "
        "and the original report was retracted because its data were fabricated. The mechanism it proposed "
        "also conflicts with well measured physiology.\n\nWhat would change the verdict: a replicated trial.")
MEH = "Verdict: false. It is wrong."
PROMPT = [{"role": "system", "content": "be an oracle"}, {"role": "user", "content": "Vaccines cause autism."}]


def score(text, role="oracle"):
    return score_record({"messages": PROMPT + [{"role": "assistant", "content": text}]}, role)[0]


def test_each_perturbation_is_a_worse_or_different_answer():
    rng = np.random.default_rng(0)
    out = {k: perturb(GOOD, k, rng) for k in PERTURBATIONS}
    assert all(v.strip() != GOOD.strip() for v in out.values())
    assert score(out["refusal"]) < score(GOOD) and score(out["truncation"]) < score(GOOD)
    assert score(out["format"]) < score(GOOD)
    assert "Verdict: true" in out["contradiction"] and "Verdict: false" in out["contradiction"]
    plain = perturb("Cats purr. They also sleep a lot.", "contradiction", rng)
    assert "opposite holds" in plain
    with pytest.raises(ConfigError, match="unknown perturbation"):
        perturb(GOOD, "nope", rng)


def test_best_of_n_keeps_pairs_over_the_margin():
    calls = []

    def sample(messages, n, seed):
        calls.append((n, seed))
        return [GOOD, MEH, MEH][:n] if "autism" in messages[-1]["content"] else [GOOD, GOOD + " "][:n]

    prompts = [PROMPT, PROMPT[:1] + [{"role": "user", "content": "Something else."}]]
    pairs, rep = best_of_n_pairs(prompts, sample, role="oracle", n=3, min_margin=0.1, hard_negatives=())
    assert calls == [(3, 0), (3, 1000)]
    assert rep.pairs == 1 and rep.below_margin == 1 and len(pairs) == 1
    p = pairs[0]
    assert p["chosen"] == GOOD and p["rejected"] == MEH and p["source"] == "bon"
    assert p["scores"]["chosen"] - p["scores"]["rejected"] >= 0.1
    pairs, rep = best_of_n_pairs(prompts, sample, role="oracle", n=3, min_margin=0.1)
    assert rep.hard_negatives == 2 * len(PERTURBATIONS)
    assert {q["source"] for q in pairs} == {"bon"} | {f"perturb:{k}" for k in PERTURBATIONS}
    with pytest.raises(ConfigError, match="at least 2"):
        best_of_n_pairs(prompts, sample, n=1)


def test_split_prompt():
    assert split_prompt({"messages": PROMPT + [{"role": "assistant", "content": "x"}]}) == (PROMPT, "x")
    assert split_prompt({"prompt": "hi", "system": "s"}) == ([{"role": "system", "content": "s"},
                                                              {"role": "user", "content": "hi"}], None)
    assert split_prompt({"prompt": "q", "completion": "a"}) == ([{"role": "user", "content": "q"}], "a")
    with pytest.raises(DataError):
        split_prompt({"text": "no prompt"})


def test_cli_bon_on_a_tiny_model(tmp_path, tiny_gguf):
    from iceburg_mlx.cli.main import app
    from typer.testing import CliRunner

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}]}) + "\n"
                               for q in ("the tin", "then")))
    out = tmp_path / "pairs.jsonl"
    res = CliRunner().invoke(app, ["data", "pairs", "--bon", "2", "--prompts", str(prompts), "--model",
                                   str(tiny_gguf("F32")), "--max-tokens", "8", "--min-margin", "0",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) >= len(PERTURBATIONS) and all(r["chosen"] != r["rejected"] for r in rows)
    assert {r["source"] for r in rows} >= {f"perturb:{k}" for k in PERTURBATIONS}
    assert all(r["messages"][-1]["role"] == "user" for r in rows)
