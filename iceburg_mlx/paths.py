"""Where the toolkit keeps its cache (models, tokenizers, the compiled BLAS shim)."""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    """`ICEBURG_MLX_HOME`, else $XDG_CACHE_HOME/iceburg-mlx, else ~/.cache/iceburg-mlx."""
    env = os.environ.get("ICEBURG_MLX_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "iceburg-mlx"
