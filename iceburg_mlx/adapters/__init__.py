"""LoRA / DoRA adapters: the layers, their files, the registry, and attaching them to a model.

    layers    LoRALinear / DoRALinear with from_base() and fuse(); apply_lora, fuse_model, adapters_disabled
    files     one set of file names; save / load / read config; check a directory; trained-on base; role
    registry  `<adapters-dir>/<role>/<version>/`, names `oracle` and `oracle@3`
    attach    spec -> directory -> a loaded model wearing the adapter
"""

from iceburg_mlx.adapters.attach import (
    adapter_role,
    attach_adapter,
    load_with_adapter,
    resolve_adapter_path,
    role_system_prompt,
)
from iceburg_mlx.adapters.files import (
    CONFIG_FILE,
    METRICS_FILE,
    PROVENANCE_FILE,
    RECIPE_FILE,
    WEIGHTS_FILE,
    base_fingerprint,
    base_mismatch,
    check_base,
    check_dir,
    load_adapters,
    read_adapter_config,
    save_adapters,
    trained_on,
)

__all__ = ["CONFIG_FILE", "METRICS_FILE", "PROVENANCE_FILE", "RECIPE_FILE", "WEIGHTS_FILE", "adapter_role",
           "attach_adapter", "base_fingerprint", "base_mismatch", "check_base", "check_dir", "load_adapters",
           "load_with_adapter", "read_adapter_config", "resolve_adapter_path", "role_system_prompt", "save_adapters",
           "trained_on"]
