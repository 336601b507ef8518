"""Finding and attaching LoRA/DoRA adapters (mlx-lm layout: adapters.safetensors + adapter_config.json).

An adapter spec is a registry name (`oracle` = its newest version, `oracle@3`; see
`iceburg_mlx.train.registry`) or a path to an adapter directory (or its adapters.safetensors).
A spec holding "/" or naming an existing directory is always a path.
"""

from __future__ import annotations

import os
from pathlib import Path

from iceburg_mlx.errors import AdapterError

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


def attach_adapter(loaded, spec: str, adapters_dir: str | os.PathLike | None = None) -> Path:
    """Apply the adapter `spec` (registry name or path) to `loaded.model` in place; returns its directory.

    Uses the same LoRA/DoRA layers as training (`train.lora`), frozen for inference."""
    from iceburg_mlx.train.lora import load_adapters

    path, name = _resolve(spec, adapters_dir)
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
