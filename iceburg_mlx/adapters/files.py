"""An adapter directory's files, one set of names for the whole toolkit: mlx-lm's layout
(`adapters.safetensors` + `adapter_config.json`, so `mlx_lm.generate --adapter-path DIR` loads
it) plus what a training run leaves beside it (`recipe.yaml`, `metrics.jsonl`,
`provenance.json`, and after an eval `eval.json`).

Saving and loading the weights, reading and checking the config, which base an adapter was
trained on (its spec and a fingerprint of the base's weights), and the role it was trained for.
Reading names and configs does not import MLX (the registry listing stays fast); the functions
that touch weights import it, and the layers, when called.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iceburg_mlx.atomic import ensure_dir, write_text, write_with
from iceburg_mlx.errors import AdapterError, IceburgError

if TYPE_CHECKING:
    import mlx.nn as nn

WEIGHTS_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"
RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.jsonl"
PROVENANCE_FILE = "provenance.json"
EVAL_FILE = "eval.json"


def read_json(file: Path) -> Any:
    """A JSON document; None when the file does not exist, AdapterError when it cannot be read."""
    try:
        return json.loads(Path(file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise AdapterError(f"{file}: cannot read ({e})") from None


def _json_or_empty(file: Path) -> dict:
    try:
        data = read_json(file)
    except AdapterError:
        return {}
    return data if isinstance(data, dict) else {}


def check_dir(path: str | os.PathLike, label: str | None = None) -> Path:
    """`path` is a directory holding adapters.safetensors and a JSON-object adapter_config.json."""
    path = Path(path)
    label = label or str(path)
    if not path.is_dir():
        raise AdapterError(f"{label}: not a directory")
    missing = [n for n in (WEIGHTS_FILE, CONFIG_FILE) if not (path / n).is_file()]
    if missing:
        raise AdapterError(f"{label}: not an adapter directory (missing {', '.join(missing)})")
    if not isinstance(read_json(path / CONFIG_FILE), dict):
        raise AdapterError(f"{path / CONFIG_FILE}: not a JSON object")
    return path


def adapter_config_dict(model: nn.Module, extra: Mapping[str, Any] | None = None) -> dict:
    """An mlx-lm compatible adapter_config.json dict describing the adapters in `model`.

    mlx-lm's `load_adapters` reads fine_tune_type, num_layers (counted from the last block) and
    lora_parameters {rank, scale, dropout, keys} (it needs `scale`, not alpha; keys are paths
    inside a block). `alpha` is kept as an extra for us; `extra` adds top-level keys.
    """
    from iceburg_mlx.adapters.layers import DoRALinear, LoRALinear, adapter_layers, blocks

    layers = adapter_layers(model)
    if not layers:
        raise AdapterError("model has no adapters")
    block_list = blocks(model)
    first, keys = len(block_list), set()
    kinds = {type(m) for _, m in layers}
    shapes = {(m.rank, m.alpha, m.p_dropout) for _, m in layers}
    if len(kinds) > 1 or len(shapes) > 1:
        raise AdapterError("adapters differ in kind, rank, alpha or dropout; mlx-lm's format needs one setting")
    for i, block in enumerate(block_list):
        for path, m in block.named_modules():
            if isinstance(m, LoRALinear):
                first = min(first, i)
                keys.add(path)
    rank, alpha, p = shapes.pop()
    config = {
        "fine_tune_type": "dora" if kinds.pop() is DoRALinear else "lora",
        "num_layers": len(block_list) - first,
        "lora_parameters": {"rank": rank, "scale": alpha / rank, "dropout": p,
                            "keys": sorted(keys), "alpha": alpha},
    }
    config.update(extra or {})
    return config


def save_adapters(model: nn.Module, path: str | os.PathLike, extra_config: Mapping[str, Any] | None = None) -> Path:
    """Write `adapters.safetensors` and `adapter_config.json` into directory `path` (each atomically)."""
    import mlx.core as mx

    from iceburg_mlx.adapters.layers import adapter_weights

    out = ensure_dir(path)
    config = adapter_config_dict(model, extra_config)
    weights = adapter_weights(model)
    mx.eval(weights)
    write_with(out / WEIGHTS_FILE, lambda t: mx.save_safetensors(str(t), weights, metadata={"format": "mlx"}),
               suffix=".safetensors")
    write_text(out / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def read_adapter_config(path: str | os.PathLike) -> dict:
    """adapter_config.json of an adapter directory, checked for what we can load."""
    file = Path(path) / CONFIG_FILE
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterError(f"{file}: no adapter config (is {path} an adapter directory?)") from None
    except (OSError, ValueError) as e:
        raise AdapterError(f"{file}: cannot read: {e}") from None
    kind = config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise AdapterError(f"{file}: fine_tune_type {kind!r} is not supported (lora, dora)")
    params = config.get("lora_parameters") or {}
    if "rank" not in params or "scale" not in params or "num_layers" not in config:
        raise AdapterError(f"{file}: needs num_layers and lora_parameters.rank/scale")
    return config


def load_adapters(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load adapters saved by `save_adapters` (or mlx-lm) into `model`, wrapping it first if bare.

    A model that already has adapters of the same layout just gets the weights (e.g. a DPO run
    starting from an SFT adapter). The adapters are left trainable and the base frozen.
    """
    import mlx.core as mx
    import mlx.nn as nn

    from iceburg_mlx.adapters.layers import DoRALinear, adapter_layers, adapter_weights, apply_lora, blocks

    config = read_adapter_config(path)
    params = config["lora_parameters"]
    rank, scale = int(params["rank"]), float(params["scale"])
    dora = config.get("fine_tune_type") == "dora"
    existing = adapter_layers(model)
    if not existing:
        keys = params.get("keys")
        if not keys:  # mlx-lm's default: every linear in the block
            keys = sorted({p for b in blocks(model) for p, m in b.named_modules()
                           if isinstance(m, (nn.Linear, nn.QuantizedLinear))})
        num_layers = int(config["num_layers"])
        apply_lora(model, {"rank": rank, "alpha": params.get("alpha", scale * rank),
                           "dropout": params.get("dropout", 0.0), "target_modules": tuple(keys),
                           "layers": num_layers if num_layers > 0 else -1, "dora": dora})
    else:
        for name, layer in existing:
            if (layer.rank, isinstance(layer, DoRALinear)) != (rank, dora) or not math.isclose(layer.scale, scale):
                raise AdapterError(f"{Path(path) / CONFIG_FILE}: rank {rank}, scale {scale:g}, "
                                   f"{'dora' if dora else 'lora'} does not match the model's adapter {name}")
    file = Path(path) / WEIGHTS_FILE
    try:
        weights = mx.load(str(file))
    except (OSError, RuntimeError, ValueError) as e:
        raise AdapterError(f"{file}: cannot read adapter weights: {e}") from None
    have = adapter_weights(model)
    problems = [f"{k}: not an adapter parameter of this model" for k in weights if k not in have]
    problems += [f"{k}: shape {tuple(w.shape)} != model's {tuple(have[k].shape)}"
                 for k, w in weights.items() if k in have and w.shape != have[k].shape]
    problems += [f"{k}: missing from the file" for k in have if k not in weights]
    if problems:
        raise AdapterError(f"{file}: does not fit the model: {problems[0]}"
                           + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    model.load_weights(list(weights.items()), strict=False)
    return model



FINGERPRINT_ROWS, FINGERPRINT_DIMS, FINGERPRINT_MIN_COSINE = 8, 4, 0.98


def base_fingerprint(model) -> list[float]:
    """A few numbers that identify a base model's weights across formats: 8 token-embedding rows
    (evenly spaced ids) projected on 4 fixed random directions. The same weights stored as F32,
    F16 or 4-bit give cosine > 0.99 between fingerprints; unrelated weights give about 0."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np

    emb = next((m for _, m in model.named_modules() if isinstance(m, (nn.Embedding, nn.QuantizedEmbedding))), None)
    if emb is None:
        return []
    vocab = emb.weight.shape[0]
    ids = mx.array([(i * vocab) // FINGERPRINT_ROWS for i in range(FINGERPRINT_ROWS)])
    rows = np.array(emb(ids).astype(mx.float32))
    proj = np.random.default_rng(0).choice([-1.0, 1.0], size=(rows.shape[1], FINGERPRINT_DIMS)) / np.sqrt(rows.shape[1])
    return [float(f"{v:.6g}") for v in (rows @ proj).ravel()]


def trained_on(path: str | os.PathLike) -> str | None:
    """The base model spec an adapter directory was trained on (its config's `base_model`, else its
    provenance's `base`), or None when it records none."""
    path = Path(path)
    for file, key in ((CONFIG_FILE, "base_model"), (PROVENANCE_FILE, "base")):
        value = _json_or_empty(path / file).get(key)
        if value:
            return str(value)
    return None


def same_base(recorded: str, spec: str | None, path: str | os.PathLike | None = None) -> bool:
    """Whether the base an adapter records names the model `spec` (loaded from `path`): the same
    spec, or two specs that resolve to the same file or directory."""
    from iceburg_mlx.models.resolve import resolve

    if spec is not None and recorded.strip().lower() == spec.strip().lower():
        return True
    try:
        mine = Path(path) if path is not None else resolve(spec).path
        theirs = resolve(recorded).path
    except IceburgError:
        return False
    return mine is not None and theirs is not None and Path(mine).resolve() == Path(theirs).resolve()


def _same_weights(adapter_path: Path, model) -> bool:
    import numpy as np

    want = _json_or_empty(adapter_path / CONFIG_FILE).get("base_fingerprint")
    if not want or model is None:
        return False
    have = base_fingerprint(model)
    if len(have) != len(want):
        return False
    a, b = np.asarray(have), np.asarray(want, dtype=np.float64)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return denom > 0 and float(a @ b) / denom >= FINGERPRINT_MIN_COSINE


def base_mismatch(adapter_path: str | os.PathLike, spec: str | None, path: str | os.PathLike | None = None,
                  model=None) -> str | None:
    """The base the adapter records when it names another model than `spec` (loaded from `path`);
    None when it matches, records none, or (given the loaded `model`) its recorded weight
    fingerprint matches the model's: the same weights in another file or format."""
    recorded = trained_on(adapter_path)
    if recorded is None or same_base(recorded, spec, path) or _same_weights(Path(adapter_path), model):
        return None
    return recorded


def check_base(adapter_path: str | os.PathLike, spec: str | None, path: str | os.PathLike | None = None,
               label: str | None = None, force: bool = False, model=None) -> str | None:
    """AdapterError when the adapter was trained on another base than `spec`; with `force` the
    mismatch comes back as a warning line instead (None when there is none)."""
    other = base_mismatch(adapter_path, spec, path, model)
    if other is None:
        return None
    msg = f"{label or adapter_path} was trained on base '{other}', not on '{spec or 'the default model'}'"
    if not force:
        raise AdapterError(f"{msg} (--force loads it anyway)")
    return msg


def recipe_role(path: str | os.PathLike) -> dict:
    """The `role` section of the recipe an adapter directory was trained with ({} when none)."""
    import yaml

    recipe = Path(path) / RECIPE_FILE
    if not recipe.is_file():
        return {}
    try:
        data = yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    section = data.get("role") if isinstance(data, dict) else None
    return section if isinstance(section, dict) else {}


def recipe_system_prompt(path: str | os.PathLike) -> str | None:
    """The system prompt an adapter directory was trained with, or None."""
    prompt = recipe_role(path).get("system_prompt")
    return prompt if isinstance(prompt, str) and prompt.strip() else None
