"""The facts `iceburg-mlx doctor` reports, as plain dicts (the CLI draws them)."""

from __future__ import annotations

import os
import sys
from typing import Any

from iceburg_mlx import _platform, hardware
from iceburg_mlx.models import default


def collect(model: str | None = None) -> dict[str, dict[str, Any]]:
    dev = hardware.device_info()
    report: dict[str, dict[str, Any]] = {
        "mlx": {"version": dev.mlx_version, "backend": dev.backend, "device": dev.device_name,
                "usable memory": f"{dev.memory_bytes / hardware.GiB:.1f} GiB", "cpus": dev.cpu_count,
                "python": sys.version.split()[0]},
    }
    if sys.platform.startswith("linux"):
        st = _platform.status()
        report["linux cpu set-up"] = {
            "opt-out (ICEBURG_MLX_NO_TUNE)": st.opted_out,
            "OpenBLAS preloaded": st.openblas or f"no ({st.openblas_note or 'not attempted'})",
            "OPENBLAS_CORETYPE": st.openblas_coretype or "(autodetect)",
            "GEMV shim (M=1 matmuls -> sgemv)": st.gemv_shim or f"no ({st.gemv_note or 'not attempted'})",
            "malloc tuned (GLIBC_TUNABLES)": st.malloc_tuned,
            "compute": "f32 (quantized weights dequantized when memory allows)",
        }
    path = default.default_model_path()
    report["default model"] = {"name": default.DEFAULT_MODEL,
                               "present": path.is_file(), "path": str(path),
                               "ollama store": os.environ.get("OLLAMA_MODELS", "~/.ollama/models")}
    if model:
        from iceburg_mlx.models import load_model

        loaded = load_model(model, lazy=True)
        rec = hardware.recommend(loaded.n_params, dev.memory_bytes, dev.backend,
                                 bool(loaded.info.get("quantized_source")))
        report["model"] = {"source": f"{loaded.source.kind} ({loaded.source.origin})",
                           "path": str(loaded.source.path), "parameters": f"{loaded.n_params / 1e6:.1f} M",
                           "bytes as stored": _bytes(loaded), "loaded as": loaded.compute}
        report["training advice"] = rec.as_dict()
    return report


def _bytes(loaded) -> str:
    p = loaded.source.path
    try:
        if p is not None and p.is_file():
            return f"{p.stat().st_size / 2**20:.0f} MiB"
        if p is not None and p.is_dir():
            return f"{sum(f.stat().st_size for f in p.glob('*.safetensors')) / 2**20:.0f} MiB"
    except OSError:
        pass
    return "?"
