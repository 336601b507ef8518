"""The training loop on a tiny model: packing, resume, convergence, QLoRA, divergence, bad input."""

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from iceburg_mlx.errors import DataError
from iceburg_mlx.adapters import load_with_adapter
from iceburg_mlx.models import load_model
from iceburg_mlx.train import batching
from iceburg_mlx.adapters import layers
from iceburg_mlx.train.config import LoraConfig, recipe_from_dict
from iceburg_mlx.train.examples import Example, build_examples
from iceburg_mlx.train.loop import LoopConfig, TrainingDivergedError, \
    TrainingInterrupted
from iceburg_mlx.train.methods.sft import sft_objective
from iceburg_mlx.train.loop import train
from iceburg_mlx.train.run import TrainOptions, train_from_recipe

WORDS = "the tin man went in to the thin end and then there was another inn".split()


def write_data(path, n=16, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            q = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 5))))
            a = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 12))))
            turns = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            if i % 4 == 0:  # some multi-turn
                turns += [{"role": "user", "content": "and then"}, {"role": "assistant", "content": "the end"}]
            f.write(json.dumps({"id": f"x{i}", "messages": turns}) + "\n")
    return path


def recipe(tmp_path, base, **over):
    d = {"model": {"base": str(base)}, "role": {"name": "tiny", "system_prompt": "be brief"},
         "data": {"train": str(write_data(tmp_path / "train.jsonl")), "max_seq_len": 256},
         "lora": {"rank": 4, "alpha": 8}, "optim": {"lr": 1e-2}, "schedule": {"warmup": 0, "kind": "constant"},
         "train": {"steps": 6, "batch_size": 4}, "eval": {"every": 0}, "save": {"every": 3}, "seed": 3}
    for k, v in over.items():
        sec, key = k.split("__")
        d.setdefault(sec, {})[key] = v
    return recipe_from_dict(d)


def losses(metrics):
    return [m["train_loss"] for m in metrics if "train_loss" in m]


def test_packed_and_unpacked_give_the_same_loss_and_gradients(tiny_gguf):
    import mlx.nn as nn

    loaded = load_model(str(tiny_gguf("F32")))
    layers.apply_lora(loaded.model, LoraConfig(rank=4, alpha=8))
    for _, layer in layers.adapter_layers(loaded.model):  # non-zero B so LoRA gradients are not trivial
        layer.lora_b = mx.random.normal(layer.lora_b.shape) * 0.05
    rng = np.random.default_rng(1)
    exs = []
    for n in (9, 14, 6):
        ids = rng.integers(3, 250, size=n).tolist()
        mask = [0] * 3 + [1] * (n - 3)
        exs.append(Example(ids, mask))
    packed = batching.pack_rows([exs], width=64)
    plain = batching.pad_rows(exs)
    assert packed.n_supervised == plain.n_supervised

    def run(b):
        arrays, k = b.arrays(), b.gather
        f = nn.value_and_grad(loaded.model, lambda m: sft_objective(m, arrays, k)[0])
        loss, grads = f(loaded.model)
        return loss.item(), dict(tree_flatten(grads))

    l1, g1 = run(packed)
    l2, g2 = run(plain)
    assert l1 == pytest.approx(l2, rel=1e-5)
    for name in g1:
        np.testing.assert_allclose(np.array(g1[name]), np.array(g2[name]), rtol=1e-3, atol=1e-5)


def test_packing_keeps_every_example_once(tmp_path, tiny_gguf):
    tok = load_model(str(tiny_gguf("F32")), lazy=True).tokenizer
    exs, rep = build_examples(tok, write_data(tmp_path / "d.jsonl", n=30), 256)
    assert rep.truncated == 0
    bs = batching.epoch_batches(exs, 4, seed=0, epoch=0, packing=True, max_seq_len=256)
    assert sum(b.n_supervised for b in bs) == sum(e.n_supervised for e in exs)
    assert len(bs) < len(batching.epoch_batches(exs, 4, seed=0, epoch=0, packing=False, max_seq_len=256))
    again = batching.epoch_batches(exs, 4, seed=0, epoch=0, packing=True, max_seq_len=256)
    assert all((a.inputs == b.inputs).all() for a, b in zip(bs, again))  # deterministic


def test_interrupt_then_resume_continues_exactly(tmp_path, tiny_gguf):
    base = tiny_gguf("F32")
    full = train_from_recipe(recipe(tmp_path, base), TrainOptions(runs_dir=tmp_path / "a", publish=False))

    def stop_at_4(info):
        if info.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="checkpoint saved"):
        train_from_recipe(recipe(tmp_path, base), TrainOptions(runs_dir=tmp_path / "b", publish=False,
                                                               on_step=stop_at_4))
    run_b = next((tmp_path / "b").iterdir())
    assert (run_b / "checkpoints" / "step-000004" / "optimizer.safetensors").is_file()
    resumed = train_from_recipe(recipe(tmp_path, base), TrainOptions(runs_dir=tmp_path / "b", resume=run_b,
                                                                     publish=False))
    assert resumed.steps == 6
    np.testing.assert_allclose(losses(resumed.metrics), losses(full.metrics), rtol=1e-5)
    a = mx.load(str(full.adapter_dir / "adapters.safetensors"))
    b = mx.load(str(resumed.adapter_dir / "adapters.safetensors"))
    for k in a:
        np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), rtol=1e-4, atol=1e-6)


def test_fifty_steps_drive_the_loss_down(tmp_path, tiny_gguf):
    r = recipe(tmp_path, tiny_gguf("F32"), train__steps=50, save__every=0, optim__lr=5e-3, data__packing=True)
    res = train_from_recipe(r, TrainOptions(runs_dir=tmp_path / "r", publish=False))
    ls = losses(res.metrics)
    assert len(ls) == 50
    assert np.mean(ls[-5:]) < 0.7 * np.mean(ls[:5])
    lines = (res.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len([ln for ln in lines if "train_loss" in ln]) == 50
    prov = json.loads((res.run_dir / "provenance.json").read_text())
    assert prov["seed"] == 3 and len(prov["data"]["train"]["sha256"]) == 64 and prov["base_sha256"]


def test_qlora_trains_a_quantized_base(tmp_path, tiny_gguf):
    import mlx.nn as nn

    r = recipe(tmp_path, tiny_gguf("Q4_0"), model__compute_dtype="quantized", train__steps=12, save__every=0)
    res = train_from_recipe(r, TrainOptions(runs_dir=tmp_path / "q", publish=False))
    ls = losses(res.metrics)
    assert ls[-1] < ls[0]
    loaded = load_with_adapter(str(tiny_gguf("Q4_0")), compute="quantized", adapter=str(res.adapter_dir))
    layer = loaded.model.layers[0].self_attn.q_proj
    assert isinstance(layer.linear, nn.QuantizedLinear)


def test_nan_loss_stops_with_the_step(tiny_gguf, tmp_path):
    loaded = load_model(str(tiny_gguf("F32")))
    layers.apply_lora(loaded.model, LoraConfig(rank=2, alpha=4))
    import mlx.optimizers as optim

    def bad_objective(model, arrays, k, for_grad=True):
        loss, n, m = sft_objective(model, arrays, k, for_grad)
        return loss * mx.array(float("nan")), n, m

    exs = [Example([1, 5, 6, 7, 8, 2], [0, 0, 1, 1, 1, 1])] * 4
    it = batching.iterate(exs, 2, 0, False, 32)
    with pytest.raises(TrainingDivergedError, match="at step 1"):
        train(loaded.model, optim.Adam(learning_rate=1e-3), bad_objective, it, LoopConfig(steps=3))


def test_bad_data_line_is_named(tmp_path, tiny_gguf):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
                 + "\n{not json\n")
    tok = load_model(str(tiny_gguf("F32")), lazy=True).tokenizer
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        build_examples(tok, p, 64)
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: .*no assistant turn"):
        build_examples(tok, p, 64)
    with pytest.raises(DataError, match="not found"):
        build_examples(tok, tmp_path / "absent.jsonl", 64)


def test_overlong_policy_is_counted(tmp_path, tiny_gguf):
    tok = load_model(str(tiny_gguf("F32")), lazy=True).tokenizer
    p = write_data(tmp_path / "d.jsonl", n=12)
    lens = sorted(len(e.ids) for e in build_examples(tok, p, 1024)[0])
    cut = lens[len(lens) // 2]  # about half the examples are longer than this
    exs, rep = build_examples(tok, p, cut, "truncate")
    assert rep.truncated > 0 and all(len(e.ids) <= cut + 1 for e in exs)
    exs2, rep2 = build_examples(tok, p, cut, "drop")
    assert rep2.dropped_overlong == rep.truncated and len(exs2) + rep2.dropped_overlong + rep2.dropped_unsupervised == 12


def test_two_ranks_under_mlx_launch_match_one_process(tmp_path, tiny_gguf):
    import os
    import shutil
    import subprocess
    import sys

    data = write_data(tmp_path / "d.jsonl", n=16)
    script = os.path.join(os.path.dirname(__file__), "dist_train.py")
    args = [str(tiny_gguf("F32")), str(data)]
    one = subprocess.run([sys.executable, script, *args, str(tmp_path / "one.json"), str(tmp_path / "r1")],
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    launcher = shutil.which("mlx.launch")
    assert launcher, "mlx.launch not found (it ships with mlx)"
    two = subprocess.run([launcher, "-n", "2", "--backend", "ring", "--python", sys.executable, script, *args,
                          str(tmp_path / "two.json"), str(tmp_path / "r2")],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, (two.stdout[-1000:], two.stderr[-2000:])
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert a["world"] == 1 and b["world"] == 2
    assert len(a["losses"]) == len(b["losses"]) == 4
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-4)
