"""The peers each benchmark compares against, checked before any work is done.

    from peers import require
    require("mlx_lm_lora")      # exits at once, naming the extra that installs it

`pip install -e ".[bench]"` installs every peer (the README's Benchmarks section).
"""

from __future__ import annotations

import importlib.util
import os
import sys

PACKAGES = {"mlx_lm": "mlx-lm", "mlx_lm_lora": "mlx-lm-lora", "llama_cpp": "llama-cpp-python"}


def missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(*modules: str) -> None:
    gone = missing(*modules)
    if gone:
        names = ", ".join(PACKAGES.get(m, m) for m in gone)
        sys.exit(f"error: {os.path.basename(sys.argv[0])} compares against {names}, which is not installed: "
                 f'pip install -e ".[bench]" installs every benchmark peer')
