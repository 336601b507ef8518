"""End to end: the tiny model with a random adapter against itself, on a small generated bench."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest
from typer.testing import CliRunner

from iceburg_mlx.eval.bench import (
    contamination_probe,
    eval_params,
    evaluate,
    load_items,
)
from iceburg_mlx.eval.compare import compare, run_regression
from iceburg_mlx.eval.report import build_record, write_report
from iceburg_mlx.adapters import load_with_adapter
from iceburg_mlx.models import load_model
from iceburg_mlx.adapters.layers import adapter_layers, apply_lora
from iceburg_mlx.adapters.files import save_adapters

BENCH = {
    "oracle": [({"verdict": "false"}, "Is the sun a planet?", "Verdict: false\nConfidence: 0.9"),
               ({"verdict": "true"}, "Is water wet?", "Verdict: true\nConfidence: 0.8"),
               ({"verdict": "unverifiable"}, "Did Caesar like figs?", "Verdict: unverifiable\nConfidence: 0.6")],
    "dissident": [({"flaw_keywords": ["correlation"], "claim_holds": False}, "Ice cream causes drowning.",
                   "It mistakes correlation for causation.")],
    "surveyor": [({"required_sections": ["Summary"]}, "Survey tin.", "## Summary\nTin is a metal.")],
    "synthesist": [({"domains": [["iron"], ["water"]], "mechanism": True}, "Link iron and water.",
                    "Iron rusts in water because of oxidation.")],
    "general": [({"max_words": 40}, "Say hi.", "Hi."), ({"must_include": ["the"]}, "Use 'the'.", "the end")],
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-data")
    for bench, rows in BENCH.items():
        (root / bench).mkdir()
        with open(root / bench / "eval.jsonl", "w") as f:
            for i, (expect, q, a) in enumerate(rows):
                rec = {"id": f"{bench}-{i}", "messages": [{"role": "user", "content": q},
                                                          {"role": "assistant", "content": a}], "expect": expect}
                f.write(json.dumps(rec) + "\n")
    return root


@pytest.fixture(scope="module")
def adapter_dir(tiny_gguf, tmp_path_factory):
    """A LoRA adapter with random (non-zero) lora_b: a model that answers differently from the base."""
    loaded = load_model(str(tiny_gguf("F32")))
    apply_lora(loaded.model, {"rank": 4, "alpha": 8.0, "target_modules": ("q_proj", "v_proj"), "layers": -1})
    mx.random.seed(7)
    for _, layer in adapter_layers(loaded.model):
        layer.lora_b = 0.5 * mx.random.normal(layer.lora_b.shape)
    return save_adapters(loaded.model, tmp_path_factory.mktemp("adapter") / "oracle-3")


@pytest.fixture(scope="module")
def items(data_dir):
    return {b: load_items(b, data_dir) for b in BENCH}


def test_library_pipeline(tiny_gguf, adapter_dir, items, tmp_path):
    params = eval_params(seed=0, max_tokens=12)
    a_model = load_with_adapter(str(tiny_gguf("F32")), adapter=str(adapter_dir))
    b_model = load_model(str(tiny_gguf("F32")))
    a = evaluate(a_model.model, a_model.tokenizer, items, params, label="oracle@3")
    b = evaluate(b_model.model, b_model.tokenizer, items, params, label="base")
    assert set(a.benches) == set(BENCH) and a.benches["oracle"].n == 3
    answers_a = [r.answer for r in a.benches["oracle"].items]
    answers_b = [r.answer for r in b.benches["oracle"].items]
    assert answers_a != answers_b                                  # the adapter is applied
    again = evaluate(a_model.model, a_model.tokenizer, {"oracle": items["oracle"]}, params, label="x",
                     perplexity=False, contamination=False)
    assert [r.answer for r in again.benches["oracle"].items] == answers_a   # seeded greedy: reproducible
    assert a.perplexity.tokens == b.perplexity.tokens > 0 and a.perplexity.perplexity != b.perplexity.perplexity
    assert a.contamination["mode"] == "chat" and a.contamination["n"] == 3
    comps = compare(a, b)
    assert [c.bench for c in comps] == list(BENCH)
    assert all(c.verdict().startswith(f"oracle@3 vs base on {c.bench}: ") for c in comps)
    record = build_record(a, b, comps, {"seed": 0, "max_tokens": 12})
    paths = write_report(tmp_path, record)
    assert json.loads(paths["eval.json"].read_text())["verdicts"] == [c.verdict() for c in comps]
    assert "# Eval: oracle@3 vs base" in paths["report"].read_text()


def test_completion_mode_probe_and_regression_set(tiny_gguf, tmp_path):
    loaded = load_model(str(tiny_gguf("F32")))
    params = eval_params(max_tokens=6)
    probe = contamination_probe(loaded.model, loaded.tokenizer, params, mode="completion")
    assert probe["mode"] == "completion" and probe["n"] == 3 and isinstance(probe["passed"], bool)
    reg = tmp_path / "regression.jsonl"
    prompt = [{"role": "user", "content": "the tin man"}]
    from iceburg_mlx.generation import generate
    from iceburg_mlx.templates import chat_prompt

    known = generate(loaded.model, loaded.tokenizer, chat_prompt(loaded.tokenizer, prompt), params).text
    reg.write_text("\n".join(json.dumps(r) for r in [
        {"id": "same", "messages": prompt, "answer": known},
        {"id": "drift", "messages": prompt, "answer": "a completely different known-good answer, long"},
        {"id": "check", "prompt": "anything", "bench": "general", "expect": {"must_include": ["zzzq"]}},
    ]) + "\n")
    out = run_regression(loaded.model, loaded.tokenizer, reg, params)
    flags = {(f["id"], f["flag"]) for f in out["flags"]}
    assert flags == {("drift", "drifted"), ("check", "failed_check")}
    assert out["items"][0]["similarity"] == 1.0


def test_cli_table_json_and_eval_json(tiny_gguf, adapter_dir, data_dir, tmp_path):
    from iceburg_mlx.cli.main import app

    out = tmp_path / "registry-entry"
    args = ["eval", "--model", str(tiny_gguf("F32")), "--adapter", str(adapter_dir), "--against", "base",
            "--bench", "all", "--data-dir", str(data_dir), "--n", "2", "--max-tokens", "8", "--out", str(out)]
    runner = CliRunner()
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    text = r.stdout
    assert "iceburg-mlx eval" in text and "95% CI" in text and "perplexity oracle-3:" in text
    assert "oracle-3 vs base on oracle: " in text and "McNemar p=" in text
    record = json.loads((out / "eval.json").read_text())
    assert record["model"]["label"] == "oracle-3" and record["against"]["label"] == "base"
    assert record["model"]["benches"]["oracle"]["n"] == 2 and len(record["verdicts"]) == len(BENCH)
    assert record["model"]["adapter"] == str(adapter_dir)
    assert (out / "report.md").is_file()
    # second run, --json: one JSON object; the previous eval.json in --out is diffed (same answers)
    held_out = tmp_path / "valid.jsonl"
    held_out.write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                 {"role": "assistant", "content": "the answer"}]}) + "\n")
    r = runner.invoke(app, args + ["--json", "--no-contamination", "--ppl-data", str(held_out)])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["changes"] == [] and obj["model"]["contamination"] is None
    assert obj["model"]["perplexity"]["conversations"] == 1 and obj["against"]["perplexity"]["conversations"] == 1
    assert obj["model"]["benches"] == record["model"]["benches"]


def test_cli_rejects_bad_options(data_dir):
    from iceburg_mlx.cli.main import app

    from iceburg_mlx.errors import ConfigError

    r = CliRunner().invoke(app, ["eval", "--bench", "nope", "--data-dir", str(data_dir)])
    assert isinstance(r.exception, ConfigError)
    r = CliRunner().invoke(app, ["eval", "--against", "base", "--data-dir", str(data_dir)])
    assert isinstance(r.exception, ConfigError)
