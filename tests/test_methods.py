"""Training methods plug into one loop: a method defined here, in the tests, trains through the CLI
with no edit to the library; the run builder names no method."""

from __future__ import annotations

import inspect
import json

import mlx.core as mx
import pytest
import yaml

from iceburg_mlx.cli.main import main
from iceburg_mlx.train import run as run_module
from iceburg_mlx.train.forward import hidden_states
from iceburg_mlx.train.losses import lm_head, selected_logprobs
from iceburg_mlx.train.methods import METHODS, Method, MethodData, get_method, register, steps_for
from iceburg_mlx.train.methods.sft import build

WORDS = "the tin man went in to the thin end and then there was another inn".split()


def weighted_objective(model, arrays, k, for_grad=True):
    """Cross-entropy where later answer tokens weigh more (w = 1 + position / length): a
    token-weighted CE. Count = the supervised tokens; metric: the mean weight."""
    h = hidden_states(model, arrays["inputs"], arrays.get("attn"))
    mask = arrays["mask"]
    length = mask.shape[1]
    weighted = mask * (1.0 + mx.arange(length, dtype=mx.float32) / length)[None]
    logps, w, _ = selected_logprobs(lm_head(model), h, arrays["targets"], weighted, k, for_grad)
    n = (w > 0).sum().astype(mx.float32)
    return -(logps * w).sum(), n, {"weight": w.sum()}


class WeightedCE(Method):
    name = "weighted-ce-test"

    def prepare(self, recipe, loaded, ctx):
        from iceburg_mlx.train import batching

        tok, d, bs = loaded.tokenizer, recipe.data, recipe.train.batch_size
        examples, rep = build(tok, ctx.train_path, recipe)

        def batches(epoch, index):
            return batching.iterate(examples, bs, recipe.seed, d.packing, d.max_seq_len, 0, epoch, index)

        per_epoch = batching.batches_per_epoch(examples, bs, recipe.seed, d.packing, d.max_seq_len)
        return MethodData(weighted_objective, batches, steps_for(recipe, per_epoch), rep, unit="weighted tokens",
                          provenance={"weights": "1 + position / length"})


@pytest.fixture
def registered():
    register(WeightedCE())
    yield
    METHODS.pop(WeightedCE.name, None)


def test_a_method_defined_in_the_tests_trains_three_steps_through_the_cli(registered, tiny_gguf, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": " ".join(WORDS[i:i + 4])},
                                                     {"role": "assistant", "content": " ".join(WORDS[i:i + 8])}]}) + "\n"
                            for i in range(8)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"base": str(tiny_gguf("F32"))}, "role": {"name": "tiny"}, "method": {"name": WeightedCE.name},
        "data": {"train": str(data), "max_seq_len": 64}, "lora": {"rank": 4, "alpha": 8},
        "train": {"steps": 3, "batch_size": 2}, "eval": {"every": 0}, "save": {"every": 0}}))
    rc = main(["train", str(recipe), "--adapters-dir", str(tmp_path / "ad"), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert rc == 0, err
    entry = tmp_path / "ad" / "tiny" / "1"
    steps = [json.loads(x) for x in (entry / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == [1, 2, 3]
    assert all(m["unit"] == "weighted tokens" and 1.0 < m["weight"] < 2.0 for m in steps)
    prov = json.loads((entry / "provenance.json").read_text())
    assert prov["method"] == WeightedCE.name and prov[WeightedCE.name] == {"weights": "1 + position / length"}
    assert "weighted tokens/s" in err


def test_the_run_builder_names_no_method():
    src = inspect.getsource(run_module)
    for name in METHODS:
        assert f'"{name}"' not in src and f"'{name}'" not in src
    assert "dpo" not in src.lower()


def test_unknown_method_is_refused_with_the_choices():
    from iceburg_mlx.errors import ConfigError

    with pytest.raises(ConfigError, match="available: dpo, sft"):
        get_method("grpoo")
    assert isinstance(get_method("sft"), Method)
