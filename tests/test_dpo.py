"""DPO: objective vs a plain full-logits computation, gradients vs finite differences, preference
data checks (file:line), held-out split, the reference cache, init-adapter checks, tiny runs."""

from __future__ import annotations

import itertools
import json

import mlx.core as mx
import numpy as np
import pytest
from mlx import nn
from mlx.utils import tree_flatten
from mlx_lm.models.llama import Model, ModelArgs

import iceburg_mlx  # noqa: F401  (OpenBLAS preload before mlx.core)
from iceburg_mlx.errors import AdapterError, DataError
from iceburg_mlx.models import load_model
from iceburg_mlx.train import prefs
from iceburg_mlx.train.methods import RunContext, dpo
from iceburg_mlx.adapters import layers
from iceburg_mlx.train.config import LoraConfig, recipe_from_dict
from iceburg_mlx.train.examples import Example
from iceburg_mlx.train.losses import PREFERENCE_LOSSES
from iceburg_mlx.train.methods.dpo import dpo_objective
from iceburg_mlx.train.run import TrainOptions, train_from_recipe

ARGS = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=256)


def tiny_policy(seed=0):
    mx.random.seed(seed)
    model = Model(ModelArgs(**ARGS))
    model.set_dtype(mx.float32)
    layers.apply_lora(model, LoraConfig(rank=4, alpha=8))
    for _, layer in layers.adapter_layers(model):  # non-zero B: gradients reach lora_a too
        layer.lora_b = mx.random.normal(layer.lora_b.shape) * 0.1
    mx.eval(model.parameters())
    return model


def random_pairs(n=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = rng.integers(3, 250, size=int(rng.integers(3, 7))).tolist()
        sides = []
        for _ in range(2):
            ans = rng.integers(3, 250, size=int(rng.integers(2, 9))).tolist()
            sides.append(Example(prompt + ans, [0] * len(prompt) + [1] * len(ans)))
        out.append(prefs.PrefExample(sides[0], sides[1], i))
    return out


def plain_logps(model, ex: Example) -> float:
    """Sum of answer-token log-probs from the full logits of one unpadded row (NumPy)."""
    logits = np.array(model(mx.array([ex.ids[:-1]]))[0], np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    tgt, mask = np.array(ex.ids[1:]), np.array(ex.mask[1:])
    return float((logp[np.arange(len(tgt)), tgt] * mask).sum())


# ----------------------------------------------------------------------------- objective

def test_stacked_batch_logps_equal_plain_rows_and_reference_cache():
    model = tiny_policy()
    pairs = random_pairs(3)
    ref = prefs.compute_reference(model, pairs, batch_size=2)
    for p in pairs:
        assert ref[p.index, 0] == pytest.approx(plain_logps(model, p.chosen), rel=1e-4, abs=1e-3)
        assert ref[p.index, 1] == pytest.approx(plain_logps(model, p.rejected), rel=1e-4, abs=1e-3)
    # the objective on the same model: policy == reference, so rewards 0 and loss log 2 per pair
    b = prefs.make_batch(pairs, ref=ref)
    loss, n, m = dpo_objective("sigmoid", 0.1)(model, b.arrays(), b.gather, for_grad=False)
    assert n.item() == 3 and loss.item() == pytest.approx(3 * np.log(2), rel=1e-4)
    assert abs(m["rewards_chosen"].item()) < 1e-4 and m["reward_accuracy"].item() <= 3
    np.testing.assert_allclose(m["logps_chosen"].item(), ref[:, 0].sum(), rtol=1e-5)


def test_reference_with_adapters_disabled_is_the_base():
    model = tiny_policy()
    pairs = random_pairs(2, seed=1)
    with layers.adapters_disabled(model):
        ref = prefs.compute_reference(model, pairs, batch_size=4)
    base = tiny_policy()  # the same weights; B = 0 makes it the base
    for _, layer in layers.adapter_layers(base):
        layer.lora_b = mx.zeros_like(layer.lora_b)
    np.testing.assert_allclose(ref, prefs.compute_reference(base, pairs, batch_size=4), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("loss", sorted(PREFERENCE_LOSSES))
def test_gradients_match_central_differences(loss):
    model = tiny_policy(seed=2)
    pairs = random_pairs(2, seed=3)
    ref = prefs.compute_reference(model, pairs, batch_size=2) + np.array([[-1.5, 0.7], [0.4, -2.0]])
    b = prefs.make_batch(pairs, ref=ref)
    arrays, k = b.arrays(), b.gather
    obj = dpo_objective(loss, beta=0.3, label_smoothing=0.1 if loss == "sigmoid" else 0.0)
    _, grads = nn.value_and_grad(model, lambda m: obj(m, arrays, k)[0])(model)
    grads = dict(tree_flatten(grads))
    probes = [("model.layers.0.self_attn.q_proj", "lora_b", (1, 3)),
              ("model.layers.1.mlp.down_proj", "lora_a", (5, 2)),
              ("model.layers.1.self_attn.v_proj", "lora_b", (0, 7))]
    eps = 1e-2
    for path, leaf, idx in probes:
        layer = dict(model.named_modules())[path]
        analytic = float(np.array(grads[f"{path}.{leaf}"])[idx])
        w = np.array(layer[leaf])
        vals = []
        for sign in (1, -1):
            w2 = w.copy()
            w2[idx] += sign * eps
            setattr(layer, leaf, mx.array(w2))
            vals.append(obj(model, arrays, k, for_grad=False)[0].item())
        setattr(layer, leaf, mx.array(w))
        numeric = (vals[0] - vals[1]) / (2 * eps)
        assert analytic == pytest.approx(numeric, rel=3e-2, abs=2e-4), (loss, path, leaf)


# ----------------------------------------------------------------------------- data

PROMPT = [{"role": "user", "content": "the tin man"}]


def write_prefs(path, n=12, seed=0):
    rng = np.random.default_rng(seed)
    words = ["the", "tin", "man", "went", "in", "to", "the", "thin", "end", "and", "then", "there", "was", "another", "inn"]
    with open(path, "w") as f:
        for i in range(n):
            good = " ".join(rng.choice(words, size=int(rng.integers(4, 10)))) + " then"
            bad = " ".join(rng.choice(words, size=int(rng.integers(2, 6)))) + " inn inn"
            f.write(json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": f"q {i} the"}],
                                "chosen": good, "rejected": bad}) + "\n")
    return path


@pytest.fixture(scope="module")
def tok(tiny_gguf):
    return load_model(str(tiny_gguf("F32")), lazy=True).tokenizer


def test_bad_preference_lines_are_named(tmp_path, tok):
    p = write_prefs(tmp_path / "prefs.jsonl", n=3)
    lines = p.read_text().splitlines()
    bad = json.loads(lines[1])
    del bad["rejected"]
    p.write_text("\n".join([lines[0], json.dumps(bad), lines[2]]) + "\n")
    with pytest.raises(DataError, match=r"prefs\.jsonl:2: .*lacks 'rejected'"):
        prefs.build_pref_examples(tok, p, 128)
    same = json.loads(lines[2])
    same["rejected"] = same["chosen"] + "  "
    p.write_text("\n".join([lines[0], lines[1], json.dumps(same)]) + "\n")
    with pytest.raises(DataError, match=r"prefs\.jsonl:3: .*identical"):
        prefs.build_pref_examples(tok, p, 128)
    same["rejected"] = " "
    p.write_text(json.dumps(same) + "\n")
    with pytest.raises(DataError, match=r"prefs\.jsonl:1: 'rejected' is empty"):
        prefs.build_pref_examples(tok, p, 128)


def test_pairs_masks_split_and_batches(tmp_path, tok):
    exs, rep = prefs.build_pref_examples(tok, write_prefs(tmp_path / "p.jsonl", n=40), 128, system_prompt="be brief")
    assert rep.examples == 40 and all(e.chosen.n_supervised and e.rejected.n_supervised for e in exs)
    e = exs[0]
    n_prompt = e.chosen.mask.index(1)
    assert e.chosen.ids[:n_prompt] == e.rejected.ids[:n_prompt]  # one prompt, two answers
    train, held = prefs.split_pairs(exs, seed=0)
    assert len(held) == 8 and len(train) == 32 and not {p.index for p in train} & {p.index for p in held}
    assert [p.index for p in held] == [p.index for p in prefs.split_pairs(exs, seed=0)[1]]  # deterministic
    ref = np.arange(80, dtype=np.float64).reshape(40, 2)
    b = prefs.epoch_pref_batches(train, 4, seed=0, epoch=0, ref=ref)[0]
    assert b.rows.inputs.shape[0] == 8 and b.pairs == 4
    np.testing.assert_array_equal(b.ref, np.concatenate([ref[b.index, 0], ref[b.index, 1]]))
    half = prefs.take_pairs(b, [1, 3])
    np.testing.assert_array_equal(half.rows.inputs, b.rows.inputs[[1, 3, 5, 7]])


def test_reference_cache_hit_and_key(tmp_path):
    model = tiny_policy()
    pairs = random_pairs(3)
    key = prefs.cache_key(data_sha256="x", base="b", init_adapter=None, max_seq_len=64)
    a, file, hit = prefs.cached_reference(model, pairs, key, 2, cache_dir=tmp_path)
    assert not hit and file.is_file()
    b, _, hit2 = prefs.cached_reference(None, pairs, key, 2, cache_dir=tmp_path)  # no model needed on a hit
    assert hit2 and np.array_equal(a, b)
    assert key != prefs.cache_key(data_sha256="x", base="b", init_adapter=None, max_seq_len=65)
    assert key != prefs.cache_key(data_sha256="x", base="b", init_adapter="abc", max_seq_len=64)


# ----------------------------------------------------------------------------- runs

def dpo_recipe(tmp_path, base, **over):
    d = {"model": {"base": str(base)}, "role": {"name": "tiny", "system_prompt": "be brief"},
         "data": {"train": str(write_prefs(tmp_path / "prefs.jsonl", n=16)), "max_seq_len": 128},
         "method": {"name": "dpo", "beta": 0.5}, "lora": {"rank": 4, "alpha": 8}, "optim": {"lr": 2e-2},
         "schedule": {"warmup": 0, "kind": "constant"}, "train": {"steps": 6, "batch_size": 4},
         "eval": {"every": 3, "batches": -1}, "save": {"every": 2}, "seed": 1}
    for k, v in over.items():
        sec, key = k.split("__")
        d.setdefault(sec, {})[key] = v
    return recipe_from_dict(d)


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ICEBURG_MLX_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_tiny_dpo_run_reports_rewards_and_resumes_exactly(tmp_path, tiny_gguf, cache_home):
    from iceburg_mlx.train.loop import TrainingInterrupted

    base = tiny_gguf("F32")
    notes = []
    full = train_from_recipe(dpo_recipe(tmp_path, base), TrainOptions(runs_dir=tmp_path / "a", publish=False,
                                                                      on_event=notes.append))
    steps = [m for m in full.metrics if "train_loss" in m]
    val = [m for m in full.metrics if "val_loss" in m]
    assert len(steps) == 6 and len(val) == 2
    for key in ("rewards_chosen", "rewards_rejected", "reward_accuracy", "reward_margin", "logps_chosen"):
        assert key in steps[0] and f"val_{key}" in val[0]
    assert steps[0]["train_loss"] == pytest.approx(np.log(2), abs=1e-3)  # policy == reference at step 1
    assert any("computed, cached in" in n for n in notes) and any("held-out reward accuracy" in n for n in notes)
    prov = json.loads((full.run_dir / "provenance.json").read_text())
    assert prov["dpo"]["pairs"] == {"train": 12, "valid": 4}

    def stop_at_3(info):
        if info.step == 3:
            raise KeyboardInterrupt

    notes.clear()
    with pytest.raises(TrainingInterrupted):
        train_from_recipe(dpo_recipe(tmp_path, base), TrainOptions(runs_dir=tmp_path / "b", publish=False,
                                                                   on_step=stop_at_3, on_event=notes.append))
    assert any("read from" in n for n in notes)  # the second run used the cache
    run_b = next((tmp_path / "b").iterdir())
    resumed = train_from_recipe(dpo_recipe(tmp_path, base), TrainOptions(runs_dir=tmp_path / "b", resume=run_b,
                                                                         publish=False))
    a = [m["train_loss"] for m in full.metrics if "train_loss" in m]
    b = [m["train_loss"] for m in resumed.metrics if "train_loss" in m]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_init_adapter_is_policy_start_and_frozen_reference(tmp_path, tiny_gguf, cache_home):
    base = tiny_gguf("F32")
    sft = recipe_from_dict({"model": {"base": str(base)}, "role": {"name": "tiny", "system_prompt": "be brief"},
                            "data": {"train": str(write_prefs(tmp_path / "sft.jsonl", n=8)), "max_seq_len": 128},
                            "lora": {"rank": 4, "alpha": 8}, "optim": {"lr": 2e-2}, "train": {"steps": 3},
                            "eval": {"every": 0}, "save": {"every": 0}})
    # a preference file is not SFT data; train the SFT adapter on the chosen answers instead
    rows = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps({"messages": r["messages"] + [
        {"role": "assistant", "content": r["chosen"]}]}) + "\n" for r in rows))
    reg = tmp_path / "adapters"
    res = train_from_recipe(sft, TrainOptions(runs_dir=tmp_path / "sft", adapters_dir=reg))
    assert res.registry_name == "tiny@1"

    r = dpo_recipe(tmp_path, base, method__init_adapter="tiny@1", train__steps=1, eval__every=0)
    loaded = load_model(str(base))
    layers.apply_lora(loaded.model, r.lora)
    data = dpo.DPO().prepare(r, loaded, RunContext(tmp_path / "prefs.jsonl", adapters_dir=reg, base_path=base))
    # the reference is base + the SFT adapter, not the bare base
    batches = [b for _, _, b in itertools.islice(data.batches(0, 0), 3)]
    every = prefs.build_pref_examples(loaded.tokenizer, tmp_path / "prefs.jsonl", r.data.max_seq_len,
                                      r.data.overlong, r.role.system_prompt)[0]
    pairs = [every[i] for b in batches for i in b.index]
    with layers.adapters_disabled(loaded.model):
        bare = prefs.compute_reference(loaded.model, pairs, 4)
    with_sft = prefs.compute_reference(loaded.model, pairs, 4)
    cached = np.concatenate([b.ref.reshape(2, -1).T for b in batches])
    np.testing.assert_allclose(cached, with_sft, rtol=1e-5, atol=1e-4)
    assert np.abs(bare - with_sft).max() > 1e-2
    res = train_from_recipe(r, TrainOptions(runs_dir=tmp_path / "dpo", adapters_dir=reg, publish=False))
    first = next(m for m in res.metrics if "train_loss" in m)
    assert first["train_loss"] == pytest.approx(np.log(2), abs=1e-3)  # policy starts at the SFT adapter


def test_init_adapter_missing_or_other_base_is_refused_before_compute(tmp_path, tiny_gguf, monkeypatch):
    from iceburg_mlx import models

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the init adapter was checked")

    monkeypatch.setattr(models, "load_model", no_load)
    r = dpo_recipe(tmp_path, tiny_gguf("F32"), method__init_adapter="nosuch@3")
    with pytest.raises(AdapterError, match=r"method\.init_adapter: .*'nosuch"):
        train_from_recipe(r, TrainOptions(runs_dir=tmp_path / "r", adapters_dir=tmp_path / "reg"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "adapters.safetensors").write_bytes(b"")
    (other / "adapter_config.json").write_text(json.dumps({
        "fine_tune_type": "lora", "num_layers": 2, "base_model": "some-other-model",
        "lora_parameters": {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": ["self_attn.q_proj"]}}))
    r = dpo_recipe(tmp_path, tiny_gguf("F32"), method__init_adapter=str(other))
    with pytest.raises(AdapterError, match="trained on base 'some-other-model'"):
        train_from_recipe(r, TrainOptions(runs_dir=tmp_path / "r"))
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model"] = str(tiny_gguf("F32"))
    cfg["lora_parameters"]["rank"] = 8
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="rank 8 .* the recipe's lora is lora rank 4"):
        train_from_recipe(r, TrainOptions(runs_dir=tmp_path / "r"))


def test_shipped_dpo_recipes_load():
    from iceburg_mlx.train.config import load_recipe

    for role in ("oracle", "dissident", "surveyor", "synthesist"):
        r = load_recipe(f"{role}-dpo")
        assert r.method.name == "dpo" and r.data.train == f"data/{role}/prefs.jsonl" and r.data.valid is None
        assert r.role.name == role and r.role.system_prompt == load_recipe(role).role.system_prompt
