"""Write a (fused) model as a Hugging Face directory that mlx-lm and transformers load.

config.json, sharded `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`,
the tokenizer (saved by the tokenizer's own `save_pretrained`, chat template included),
generation_config.json. A model still holding MLX-quantized layers is written in mlx-lm's
quantized layout (`quantization` in config.json, per-layer entries where bits differ); such a
directory loads in mlx-lm, not in transformers. Every file is written atomically; the index and
config come last, so a directory with an index is complete.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from iceburg_mlx.errors import ExportError
from iceburg_mlx.atomic import atomic_path, write_json, write_with

MAX_SHARD_BYTES = 5 << 30
INDEX = "model.safetensors.index.json"
_HF_CLASS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


@dataclass
class HFResult:
    path: Path
    files: list[str] = field(default_factory=list)
    quantized: bool = False


def _quantization(model) -> dict | None:
    """mlx-lm's `quantization` config for the model's quantized layers (None: all dense)."""
    import mlx.nn as nn

    layers = {name: (m.group_size, m.bits) for name, m in model.named_modules()
              if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}
    if not layers:
        return None
    counts: dict[tuple[int, int], int] = {}
    for gb in layers.values():
        counts[gb] = counts.get(gb, 0) + 1
    group_size, bits = max(counts, key=counts.get)
    q: dict = {"group_size": group_size, "bits": bits}
    for name, gb in layers.items():
        if gb != (group_size, bits):
            q[name] = {"group_size": gb[0], "bits": gb[1]}
    return q


def _shards(weights: dict, max_bytes: int) -> list[dict]:
    shards: list[dict] = [{}]
    size = 0
    for name, arr in weights.items():
        if shards[-1] and size + arr.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    return shards


def _hf_config(config: dict, quantization: dict | None, dtype: str, tokenizer) -> dict:
    cfg = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    mt = cfg.get("model_type")
    cfg.setdefault("architectures", [_HF_CLASS.get(mt, "")] if mt in _HF_CLASS else [])
    cfg.setdefault("hidden_act", "silu")
    cfg["torch_dtype"] = dtype
    tok = getattr(tokenizer, "_tokenizer", tokenizer)
    for name in ("bos_token_id", "eos_token_id"):
        tid = getattr(tok, name, None)
        if name not in cfg and isinstance(tid, int):
            cfg[name] = tid
    if quantization:
        cfg["quantization"] = quantization
        cfg["quantization_config"] = quantization
    return cfg


def _save_tokenizer(tokenizer, out: Path, chat_template: str | None) -> list[str]:
    tok = getattr(tokenizer, "_tokenizer", tokenizer)
    if chat_template and not getattr(tok, "chat_template", None):
        tok.chat_template = chat_template
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=out))
    try:
        tok.save_pretrained(str(staging))
        names = sorted(p.name for p in staging.iterdir() if p.is_file())
        for n in names:
            write_with(out / n, lambda t, n=n: shutil.copyfile(staging / n, t))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return names


def _generation_config(config: dict, source_dir: Path | None, tokenizer) -> dict:
    if source_dir and (source_dir / "generation_config.json").is_file():
        try:
            return json.loads((source_dir / "generation_config.json").read_text(encoding="utf-8"))
        except ValueError:
            pass
    tok = getattr(tokenizer, "_tokenizer", tokenizer)
    eos = sorted(getattr(tokenizer, "eos_token_ids", None) or []) or config.get("eos_token_id")
    gen = {"bos_token_id": config.get("bos_token_id", getattr(tok, "bos_token_id", None)), "eos_token_id": eos}
    return {k: v for k, v in gen.items() if v is not None}


def save_hf_dir(model, config: dict, tokenizer, out_dir: str | Path, *, source_dir: Path | None = None,
                chat_template: str | None = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> HFResult:
    """Write the model's weights, config, tokenizer and generation config into `out_dir`."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    if any(("lora_a" in k or "lora_b" in k) for k in weights):
        raise ExportError("adapters must be fused before export")
    quantization = _quantization(model)
    floats = {str(a.dtype).rsplit(".", 1)[-1] for k, a in weights.items()
              if a.dtype in (mx.float32, mx.float16, mx.bfloat16) and not k.endswith((".scales", ".biases"))}
    dtype = "float32" if "float32" in floats or not floats else min(floats)
    shards = _shards(weights, max_shard_bytes)
    n = len(shards)
    weight_map, files = {}, []
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        mx.eval(list(shard.values()))
        write_with(out / name, lambda t, s=shard: mx.save_safetensors(str(t), s, metadata={"format": "mlx"}),
                   suffix=".safetensors")
        weight_map.update({k: name for k in shard})
        files.append(name)
    for stale in out.glob("model-*-of-*.safetensors"):  # shards of an earlier export with another count
        if stale.name not in files:
            stale.unlink()
    files += _save_tokenizer(tokenizer, out, chat_template)
    write_json(out / "generation_config.json", _generation_config(config, source_dir, tokenizer))
    total = sum(int(a.nbytes) for a in weights.values())
    write_json(out / INDEX, {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    write_json(out / "config.json", _hf_config(config, quantization, dtype, tokenizer))
    files += ["generation_config.json", INDEX, "config.json"]
    return HFResult(out, files, quantized=quantization is not None)


__all__ = ["INDEX", "HFResult", "atomic_path", "save_hf_dir"]
