"""iceburg-mlx: turn a small base LLM into ICEBURG role models with MLX.

Importing the package performs the Linux CPU set-up (OpenBLAS preload) before anything imports
`mlx.core`; see `iceburg_mlx._platform`. Heavy modules are imported lazily by their users.
"""

from iceburg_mlx import _platform

_platform.setup()

__version__ = "0.1.0"
