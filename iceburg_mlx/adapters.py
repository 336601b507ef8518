"""Finding and attaching LoRA/DoRA adapters (mlx-lm layout: adapters.safetensors + adapter_config.json).

An adapter spec is a registry name (`oracle` = its newest version, `oracle@3`; see
`iceburg_mlx.train.registry`) or a path to an adapter directory (or its adapters.safetensors).
A spec holding "/" or naming an existing directory is always a path.
"""

from __future__ import annotations

import os
from pathlib import Path

from iceburg_mlx.errors import AdapterError, IceburgError

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def _check_dir(path: Path, label: str) -> Path:
    missing = [n for n in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) if not (path / n).is_file()]
    if missing:
        raise AdapterError(f"{label}: not an adapter directory (missing {', '.join(missing)})")
    return path


def _resolve(spec: str, adapters_dir: str | os.PathLike | None = None) -> tuple[Path, str | None]:
    """(adapter directory, registry name or None)."""
    from iceburg_mlx.train import registry

    ref = registry.resolve(spec, adapters_dir)
    if ref is not None:
        return _check_dir(ref.path, f"{ref.name} ({ref.path})"), ref.name
    path = Path(spec).expanduser()
    if path.is_file() and path.name == ADAPTER_WEIGHTS:
        path = path.parent
    if path.is_dir():
        return _check_dir(path, str(path)), None
    raise AdapterError(f"adapter '{spec}' not found: no such directory, and not a registry name "
                       f"({registry.describe(adapters_dir)})")


def resolve_adapter_path(spec: str, adapters_dir: str | os.PathLike | None = None) -> Path:
    """The adapter directory for a registry name (`role`, `role@N`) or a path."""
    return _resolve(spec, adapters_dir)[0]


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
    for file, key in ((ADAPTER_CONFIG, "base_model"), ("provenance.json", "base")):
        value = _read_json(path / file).get(key)
        if value:
            return str(value)
    return None


def _read_json(file: Path) -> dict:
    import json

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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

    want = _read_json(adapter_path / ADAPTER_CONFIG).get("base_fingerprint")
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


def attach_adapter(loaded, spec: str, adapters_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Apply the adapter `spec` (registry name or path) to `loaded.model` in place; returns its directory.

    Uses the same LoRA/DoRA layers as training (`train.lora`), frozen for inference. An adapter
    trained on another base is refused (AdapterError) unless `force`, which records a warning in
    `loaded.info["warnings"]`."""
    from iceburg_mlx.train.lora import load_adapters

    path, name = _resolve(spec, adapters_dir)
    warning = check_base(path, loaded.source.spec, loaded.source.path, spec, force, loaded.model)
    if warning:
        loaded.info.setdefault("warnings", []).append(warning)
    try:
        load_adapters(loaded.model, path)
        loaded.model.freeze()
    except (ValueError, KeyError) as e:
        raise AdapterError(f"{path}: does not fit this base model ({e})") from None
    loaded.model.eval()
    loaded.info["adapter"] = str(path)
    if name is not None:
        loaded.info["adapter_name"] = name
    return path


def adapter_role(spec: str, adapters_dir: str | os.PathLike | None = None) -> dict:
    """The `role` section of the recipe the adapter was trained with ({} when it records none)."""
    import yaml

    path, _ = _resolve(spec, adapters_dir)
    recipe = path / "recipe.yaml"
    if not recipe.is_file():
        return {}
    try:
        data = yaml.safe_load(recipe.read_text()) or {}
    except yaml.YAMLError:
        return {}
    role = data.get("role") if isinstance(data, dict) else None
    return role if isinstance(role, dict) else {}


def role_system_prompt(spec: str, adapters_dir: str | os.PathLike | None = None) -> str | None:
    """The system prompt the adapter was trained with (its recipe's `role.system_prompt`), or None
    when the adapter records no recipe or no prompt."""
    prompt = adapter_role(spec, adapters_dir).get("system_prompt")
    return prompt if isinstance(prompt, str) and prompt.strip() else None
