"""`load_model(spec)`: resolve, read, build the mlx-lm model, pick the compute form."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceburg_mlx.errors import BadModelFileError, ModelNotFoundError, UnsupportedModelError
from iceburg_mlx.models.resolve import ModelSource, resolve

COMPUTE_CHOICES = ("auto", "float32", "float16", "bfloat16", "quantized")


@dataclass
class LoadedModel:
    model: Any                    # an mlx-lm nn.Module (Hugging Face layout)
    tokenizer: Any                # mlx_lm TokenizerWrapper
    config: dict
    source: ModelSource
    compute: str                  # "float32", "quantized", "float16", "bfloat16"
    info: dict = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return self.info.get("n_params", 0)


def _model_classes(config: dict):
    model_type = config.get("model_type")
    try:
        mod = importlib.import_module(f"mlx_lm.models.{model_type}")
    except ImportError:
        raise UnsupportedModelError(f"model_type '{model_type}' is not an mlx-lm architecture") from None
    return mod.Model, mod.ModelArgs


def build_model(config: dict, where: str = "config.json"):
    """The mlx-lm model for `config`; a config that lacks fields the architecture needs (or holds
    values it cannot use) is an UnsupportedModelError naming `where`, not a TypeError."""
    Model, Args = _model_classes(config)
    try:
        return Model(Args.from_dict(config))
    except (TypeError, KeyError, ValueError, AttributeError, IndexError, ZeroDivisionError) as e:
        msg = str(e).replace("__init__() ", "")
        raise UnsupportedModelError(
            f"{where}: not a usable '{config.get('model_type')}' config for mlx-lm ({msg})") from None


def _quantize_layers(model, weights: dict, group_size: int, per_layer: dict | None = None) -> None:
    """Turn each layer that has (weight, scales, biases) into an MLX quantized layer.

    Bits are read off the shapes (packed uint32 columns vs. scale groups), so one file may mix
    8-bit embeddings and 4-bit linears (as the SmolLM2 Q4_1 GGUF does).
    """
    import mlx.nn as nn

    def predicate(path, module):
        if f"{path}.scales" not in weights:
            return False
        if per_layer and isinstance(per_layer.get(path), dict):
            return per_layer[path]
        w, s = weights[f"{path}.weight"], weights[f"{path}.scales"]
        bits = w.shape[-1] * 32 // (s.shape[-1] * group_size)
        return {"group_size": group_size, "bits": bits}

    nn.quantize(model, class_predicate=predicate)


def dequantize_layers(model, dtype) -> None:
    """Replace quantized linears/embeddings by dense ones, dequantizing with f32 scales.

    In f32 the packed form is also handed to the BLAS shim for small-M products (`packed`).

    mlx-lm's `dequantize_model` computes in the scales' dtype (f16), which rounds Q8_0 weights
    (an 8-bit integer times an 11-bit scale needs 19 bits); f32 keeps them exact.
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_unflatten

    from iceburg_mlx.models import packed

    swaps, kept = [], []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            continue
        scales, biases = mod.scales.astype(mx.float32), mod.biases.astype(mx.float32)
        w = mx.dequantize(mod.weight, scales, biases, group_size=mod.group_size, bits=mod.bits).astype(dtype)
        if isinstance(mod, nn.QuantizedEmbedding):
            new = nn.Embedding(*w.shape)
        else:
            has_bias = "bias" in mod
            new = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
            if has_bias:
                new.bias = mod.bias.astype(dtype)
        new.weight = w
        swaps.append((name, new))
        kept.append((new, mod.weight, scales, biases, mod.group_size, mod.bits))
    if dtype == mx.float32 and packed.available():
        mx.eval([k[:4] for k in kept])
        for k in kept:
            packed.keep_packed(*k)
    if swaps:
        model.update_modules(tree_unflatten(swaps))


def _pick_compute(requested: str, n_params: int, quantized: bool) -> str:
    from iceburg_mlx import hardware

    if requested not in COMPUTE_CHOICES:
        raise UnsupportedModelError(f"compute '{requested}' is not one of {', '.join(COMPUTE_CHOICES)}")
    if requested != "auto":
        return requested
    import mlx.core as mx

    if mx.metal.is_available():
        return "quantized" if quantized else "native"
    # CPU: f32 is the only fast path (OpenBLAS); keep quantized only when f32 will not fit.
    mem = hardware.system_memory_bytes()
    return "float32" if 4 * n_params <= 0.5 * mem or not quantized else "quantized"


def _load_gguf(src: ModelSource):
    from iceburg_mlx.models import gguf_loader
    from iceburg_mlx.models.gguf_file import read_gguf

    g = read_gguf(src.path)
    config = gguf_loader.model_config(g)
    weights = gguf_loader.read_weights(g)
    tokenizer = gguf_loader.load_tokenizer(g)
    info = gguf_loader.source_metadata(g)
    return config, weights, tokenizer, info


def _load_hf_dir(path: Path):
    import mlx.core as mx
    from mlx_lm.utils import load_config, load_tokenizer

    try:
        config = load_config(path)
    except Exception as e:  # json errors, missing file
        raise BadModelFileError(f"{path / 'config.json'}: cannot read ({e})") from None
    if config.get("model_file") or config.get("auto_map"):
        config.pop("auto_map", None)
        if config.get("model_file"):
            raise UnsupportedModelError(f"{path}: needs custom model code (model_file); remote code is never run")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise BadModelFileError(f"{path}: no *.safetensors weights")
    weights: dict = {}
    for f in files:
        try:
            weights.update(mx.load(str(f)))
        except (RuntimeError, ValueError) as e:
            raise BadModelFileError(f"{f}: {e}") from None
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    return config, weights, tokenizer, {"format": "safetensors"}


def _hub_snapshot(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a runtime dependency
        raise ModelNotFoundError("huggingface-hub is not installed") from None
    patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as e:
        kind = type(e).__name__
        raise ModelNotFoundError(
            f"Hub repo '{repo}' is not in the local cache and could not be downloaded ({kind}); "
            f"run `huggingface-cli download {repo}` on a connected machine, or pass a local directory"
        ) from None


def load_model(spec: str | None = None, *, compute: str = "auto", lazy: bool = False) -> LoadedModel:
    """Load any supported source into mlx-lm's model classes, in the Hugging Face layout (adapters:
    `iceburg_mlx.adapters.load_with_adapter`)."""
    import mlx.core as mx
    from mlx_lm.utils import get_total_parameters

    src = resolve(spec)
    if src.kind == "hub":
        src = ModelSource("hf_dir", src.spec, _hub_snapshot(src.repo), repo=src.repo, origin="hub")
    if src.kind == "gguf":
        config, weights, tokenizer, info = _load_gguf(src)
        group_size, per_layer = 32, None
    else:
        config, weights, tokenizer, info = _load_hf_dir(src.path)
        qcfg = config.get("quantization") or config.get("quantization_config") or {}
        group_size, per_layer = int(qcfg.get("group_size", 64)), qcfg
    model = build_model(config, f"{src.path}" + ("" if src.kind == "gguf" else "/config.json"))
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    quantized = any(k.endswith(".scales") for k in weights)
    if quantized:
        _quantize_layers(model, weights, group_size, per_layer)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise BadModelFileError(
            f"{src.path}: weights do not match the {config['model_type']} config ({e})") from None
    del weights
    n_params = int(get_total_parameters(model))
    mode = _pick_compute(compute, n_params, quantized)
    if mode in _DTYPES:
        if quantized:
            dequantize_layers(model, getattr(mx, mode))
        model.set_dtype(getattr(mx, mode))
    elif mode == "native":
        mode = "quantized" if quantized else "as stored"
    model.eval()
    if mode == "float32":
        from iceburg_mlx.models import cpu_decode

        cpu_decode.install(model)
    if not lazy:
        mx.eval(model.parameters())
    info.update({"n_params": n_params, "quantized_source": quantized})
    return LoadedModel(model, tokenizer, config, src, mode, info)


_DTYPES = ("float32", "float16", "bfloat16")
