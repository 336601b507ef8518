"""Turn what the user typed into a `ModelSource`: which loader, which file or repo."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from iceburg_mlx.errors import BadModelFileError, ModelNotFoundError
from iceburg_mlx.models import default, ollama

GGUF_MAGIC = b"GGUF"
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelSource:
    kind: str            # "gguf" | "hf_dir" | "hub"
    spec: str            # what the user typed
    path: Path | None    # local file or directory (None for a hub repo not yet downloaded)
    repo: str | None = None
    origin: str = ""     # "default", "ollama", "path", "hub"


def is_gguf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _from_path(spec: str, path: Path, origin: str) -> ModelSource:
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource("hf_dir", spec, path, origin=origin)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _from_path(spec, ggufs[0], origin)
        raise BadModelFileError(f"{path}: a directory with neither config.json nor exactly one .gguf file")
    if not is_gguf_file(path):
        raise BadModelFileError(f"{path}: not a GGUF file (no GGUF magic) and not a model directory")
    return ModelSource("gguf", spec, path, origin=origin)


def resolve(spec: str | None) -> ModelSource:
    """Resolve, in order: default alias, existing path, Ollama store, Hub repo id."""
    spec = (spec or default.DEFAULT_MODEL).strip()
    if spec.lower() in default.ALIASES:
        return ModelSource("gguf", spec, default.require_default_model(), origin="default")
    path = Path(spec).expanduser()
    if path.exists():
        return _from_path(spec, path, "path")
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith((".gguf", ".safetensors"))
    if looks_like_path:
        raise ModelNotFoundError(f"{spec}: no such file or directory")
    if ollama.is_in_store(spec):
        blob = ollama.resolve_blob(spec)
        return ModelSource("gguf", spec, blob, origin="ollama")
    if ":" in spec:  # only Ollama names carry a tag
        ollama.resolve_blob(spec)  # raises the "not in the store" message
    if _REPO_RE.match(spec):
        return ModelSource("hub", spec, None, repo=spec, origin="hub")
    raise ModelNotFoundError(
        f"unknown model '{spec}': not a path, not the default ({default.DEFAULT_MODEL}), "
        f"not an Ollama model in {ollama.store_root()}, and not a Hub repo id (org/name)"
    )
