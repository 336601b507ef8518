"""What a run was made from: code version, packages, data and weight hashes, seed, backend."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from iceburg_mlx.hashing import sha256_file, weights_sha256

PACKAGES = ("iceburg-mlx", "mlx", "mlx-lm", "numpy", "transformers", "gguf", "safetensors")


def git_sha(start: Path | None = None) -> str | None:
    where = start or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def collect(*, base_spec: str, base_path: Path | None, data_files: dict[str, Path], seed: int,
            backend: str, recipe_sha: str, world: int = 1) -> dict:
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "base": base_spec,
        "base_path": str(base_path) if base_path else None,
        "base_sha256": weights_sha256(base_path),
        "data": {k: {"path": str(v), "sha256": sha256_file(v)} for k, v in data_files.items()},
        "seed": seed,
        "backend": backend,
        "world_size": world,
        "recipe_sha256": recipe_sha,
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
    }
