"""From an adapter spec to a model wearing it.

A spec is a registry name (`oracle` = its newest version, `oracle@3`; see `adapters.registry`) or
a path to an adapter directory (or its adapters.safetensors). A spec holding "/" or naming an
existing directory is always a path.

    loaded = load_with_adapter("smollm2-135m-instruct", "oracle")     # load_model + attach_adapter
"""

from __future__ import annotations

import os
from pathlib import Path

from iceburg_mlx.adapters import files, registry
from iceburg_mlx.errors import AdapterError


def resolve(spec: str, adapters_dir: str | os.PathLike | None = None) -> tuple[Path, str | None]:
    """(adapter directory, registry name or None)."""
    ref = registry.resolve(spec, adapters_dir)
    if ref is not None:
        return files.check_dir(ref.path, f"{ref.name} ({ref.path})"), ref.name
    path = Path(spec).expanduser()
    if path.is_file() and path.name == files.WEIGHTS_FILE:
        path = path.parent
    if path.is_dir():
        return files.check_dir(path), None
    raise AdapterError(f"adapter '{spec}' not found: no such directory, and not a registry name "
                       f"({registry.describe(adapters_dir)})")


def resolve_adapter_path(spec: str, adapters_dir: str | os.PathLike | None = None) -> Path:
    """The adapter directory for a registry name (`role`, `role@N`) or a path."""
    return resolve(spec, adapters_dir)[0]


def attach_adapter(loaded, spec: str, adapters_dir: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Apply the adapter `spec` to `loaded.model` in place (the same LoRA/DoRA layers as training,
    frozen for inference); returns its directory. An adapter trained on another base is refused
    (AdapterError) unless `force`, which records a warning in `loaded.info["warnings"]`."""
    path, name = resolve(spec, adapters_dir)
    warning = files.check_base(path, loaded.source.spec, loaded.source.path, spec, force, loaded.model)
    if warning:
        loaded.info.setdefault("warnings", []).append(warning)
    try:
        files.load_adapters(loaded.model, path)
        loaded.model.freeze()
    except (ValueError, KeyError) as e:
        raise AdapterError(f"{path}: does not fit this base model ({e})") from None
    loaded.model.eval()
    loaded.info["adapter"] = str(path)
    if name is not None:
        loaded.info["adapter_name"] = name
    return path


def load_with_adapter(spec: str | None = None, adapter: str | None = None, *, compute: str = "auto",
                      force: bool = False, adapters_dir: str | os.PathLike | None = None, lazy: bool = False):
    """`models.load_model(spec)` with `adapter` (a spec as above, or None) attached."""
    from iceburg_mlx.models import load_model

    loaded = load_model(spec, compute=compute, lazy=lazy)
    if adapter:
        attach_adapter(loaded, adapter, adapters_dir, force)
    return loaded


def adapter_role(spec: str, adapters_dir: str | os.PathLike | None = None) -> dict:
    """The `role` section of the recipe the adapter was trained with ({} when it records none)."""
    return files.recipe_role(resolve(spec, adapters_dir)[0])


def role_system_prompt(spec: str, adapters_dir: str | os.PathLike | None = None) -> str | None:
    """The system prompt the adapter was trained with (its recipe's `role.system_prompt`), or None
    when the adapter records no recipe or no prompt."""
    return files.recipe_system_prompt(resolve(spec, adapters_dir)[0])
