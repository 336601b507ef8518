"""Content digests used in provenance records (training runs, fused exports)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_sha256(path: Path | None) -> str | None:
    """A file's sha256, or for a model directory sha256 over "name:sha256" of its safetensors."""
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.glob("*.safetensors")):
            h.update(f"{f.name}:{sha256_file(f)}\n".encode())
        return h.hexdigest()
    return None
