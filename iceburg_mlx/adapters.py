"""Finding and attaching LoRA/DoRA adapters (mlx-lm layout: adapters.safetensors + adapter_config.json)."""

from __future__ import annotations

from pathlib import Path

from iceburg_mlx.errors import AdapterError

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def resolve_adapter_path(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_file() and path.name == ADAPTER_WEIGHTS:
        path = path.parent
    if path.is_dir():
        missing = [n for n in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) if not (path / n).is_file()]
        if missing:
            raise AdapterError(f"{path}: not an adapter directory (missing {', '.join(missing)})")
        return path
    raise AdapterError(f"adapter '{spec}' not found (give an adapter directory)")


def attach_adapter(loaded, spec: str) -> Path:
    """Apply the adapter at `spec` to `loaded.model` in place; returns its directory."""
    from mlx_lm.tuner.utils import load_adapters

    path = resolve_adapter_path(spec)
    try:
        load_adapters(loaded.model, str(path))
    except (ValueError, KeyError) as e:
        raise AdapterError(f"{path}: does not fit this base model ({e})") from None
    loaded.model.eval()
    loaded.info["adapter"] = str(path)
    return path
