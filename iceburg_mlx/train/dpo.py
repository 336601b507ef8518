"""What a DPO run adds to `train_from_recipe`: the init-adapter checks and the preference data.

    init = check_init_adapter(recipe, adapters_dir)       # before any model is loaded
    data = prepare(recipe, model, tokenizer, ...)         # pairs, held-out split, reference cache

The reference is the policy's own model: the base with adapters disabled, or, when the run starts
from an SFT adapter (`method.init_adapter`), the base plus that adapter as loaded before the first
step. Its log-probs are computed once (cached on disk by `prefs.cached_reference`), so the frozen
reference needs neither a second copy of the weights nor a forward per step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iceburg_mlx.errors import AdapterError
from iceburg_mlx.hashing import sha256_file
from iceburg_mlx.train import prefs


@dataclass
class DpoData:
    train: list[prefs.PrefExample]
    valid: list[prefs.PrefExample]
    ref_train: np.ndarray | None          # (N, 2) for the training file; None: reference-free loss
    ref_valid: np.ndarray | None
    report: object                         # BuildReport of the training file
    provenance: dict = field(default_factory=dict)

    def steps(self, recipe) -> int:
        if recipe.train.steps is not None:
            return int(recipe.train.steps)
        per_epoch = math.ceil(len(self.train) / recipe.train.batch_size)
        return max(1, math.ceil(recipe.train.epochs * per_epoch / recipe.train.grad_accum))

    def batches(self, recipe, pad_id: int, start_epoch: int, start_index: int, rank: int = 0, world: int = 1):
        it = prefs.iterate_pref(self.train, recipe.train.batch_size, recipe.seed, pad_id, self.ref_train,
                                start_epoch, start_index)
        for epoch, index, b in it:
            yield epoch, index, prefs.take_pairs(b, range(rank, b.pairs, world)) if world > 1 else b

    def val_batches(self, recipe, pad_id: int, rank: int = 0, world: int = 1) -> list | None:
        if not self.valid:
            return None
        bs = prefs.epoch_pref_batches(self.valid, recipe.train.batch_size, recipe.seed, 0, pad_id, self.ref_valid)
        return [prefs.take_pairs(b, range(rank, b.pairs, world)) if world > 1 else b for b in bs]


# ----------------------------------------------------------------------------- init adapter

def check_init_adapter(recipe, adapters_dir=None) -> Path | None:
    """The directory of `method.init_adapter` (registry name or path), checked before any compute:
    it exists, was trained on `model.base` and has the recipe's LoRA shape. AdapterError otherwise."""
    spec = recipe.method.init_adapter
    if not spec:
        return None
    from iceburg_mlx.adapters import base_mismatch, resolve_adapter_path
    from iceburg_mlx.adapters.files import read_adapter_config

    try:
        path = resolve_adapter_path(spec, adapters_dir)
        config = read_adapter_config(path)
    except AdapterError as e:
        raise AdapterError(f"method.init_adapter: {e}") from None
    other = base_mismatch(path, recipe.model.base)
    if other is not None:
        raise AdapterError(f"method.init_adapter: {spec} ({path}) was trained on base '{other}', "
                           f"not on model.base '{recipe.model.base}'")
    p = config.get("lora_parameters", {})
    want = (recipe.lora.rank, recipe.lora.alpha / recipe.lora.rank, "dora" if recipe.lora.dora else "lora")
    have = (int(p["rank"]), float(p["scale"]), config.get("fine_tune_type", "lora"))
    if have[0] != want[0] or not math.isclose(have[1], want[1]) or have[2] != want[2]:
        raise AdapterError(f"method.init_adapter: {spec} is {have[2]} rank {have[0]} scale {have[1]:g}, the recipe's "
                           f"lora is {want[2]} rank {want[0]} scale {want[1]:g} (set lora.rank/lora.alpha to match)")
    return path


# ----------------------------------------------------------------------------- data

def prepare(recipe, model, tokenizer, *, base_path, train_path: Path, valid_path: Path | None,
            init_dir: Path | None, note: Callable[[str], None] = lambda m: None, skip: dict | None = None,
            progress: Callable[[str, int, int], None] | None = None) -> DpoData:
    """Pairs (train, held-out), the init adapter loaded into `model`, the reference log-probs."""
    import mlx.core as mx

    from iceburg_mlx.adapters import files, layers
    from iceburg_mlx.train.losses import is_reference_free

    d, m = recipe.data, recipe.method
    sysp = recipe.role.system_prompt
    skip = skip or {}
    pairs, rep = prefs.build_pref_examples(tokenizer, train_path, d.max_seq_len, d.overlong, sysp,
                                           skip.get(train_path, ()))
    if valid_path is not None:
        train, valid = pairs, prefs.build_pref_examples(tokenizer, valid_path, d.max_seq_len, d.overlong, sysp,
                                                        skip.get(valid_path, ()))[0]
    else:
        train, valid = prefs.split_pairs(pairs, recipe.seed)
        note(f"dpo: {len(train)} training pairs, {len(valid)} held out from {train_path.name} "
             f"({prefs.VALID_FRACTION:.0%}, at least {prefs.MIN_VALID})")
    init_sha = None
    if init_dir is not None:
        files.load_adapters(model, init_dir)
        mx.eval(model.parameters())
        init_sha = sha256_file(init_dir / files.WEIGHTS_FILE)
        note(f"dpo: policy and reference start from {recipe.method.init_adapter} ({init_dir})")
    prov = {"method": "dpo", "loss": m.loss, "beta": m.beta, "label_smoothing": m.label_smoothing,
            "init_adapter": str(init_dir) if init_dir else None, "init_adapter_sha256": init_sha,
            "pairs": {"train": len(train), "valid": len(valid)}}
    if is_reference_free(m.loss):
        return DpoData(train, valid, None, None, rep, prov)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    base_id = prefs.base_identity(base_path, recipe.model.base)

    def reference(path: Path, examples):
        key = prefs.cache_key(data_sha256=sha256_file(path), base=base_id, init_adapter=init_sha,
                              max_seq_len=d.max_seq_len, overlong=d.overlong, system_prompt=sysp,
                              compute=recipe.model.compute_dtype)
        ctx = layers.adapters_disabled(model) if init_dir is None else contextlib.nullcontext()
        with ctx:
            report = (lambda done, total: progress(f"reference log-probs ({path.name})", done, total)) \
                if progress else None
            arr, file, hit = prefs.cached_reference(model, examples, key, recipe.train.batch_size, pad,
                                                    on_progress=report)
        note(f"dpo: reference log-probs for {len(examples)} pairs {'read from' if hit else 'computed, cached in'} {file}")
        prov.setdefault("reference_cache", {})[path.name] = {"key": key, "hit": hit}
        return arr

    ref_train = reference(train_path, pairs)
    ref_valid = reference(valid_path, valid) if valid_path is not None else ref_train
    return DpoData(train, valid, ref_train, ref_valid, rep, prov)


def summary(metrics: dict) -> str:
    """One line of preference metrics (training or held-out): accuracy, margin, rewards."""
    if not metrics:
        return "no metrics"
    return (f"reward accuracy {metrics.get('reward_accuracy', float('nan')):.3f}, "
            f"margin {metrics.get('reward_margin', float('nan')):+.4f}, "
            f"rewards chosen {metrics.get('rewards_chosen', float('nan')):+.4f} / "
            f"rejected {metrics.get('rewards_rejected', float('nan')):+.4f}")
