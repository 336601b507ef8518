"""Resolve an Ollama model name (`llama3.2:3b`, `qwen2.5:7b`) to its GGUF blob in the local store.

Store layout: <root>/manifests/<registry>/<namespace>/<model>/<tag> is a JSON manifest whose layer
with mediaType `application/vnd.ollama.image.model` names the weights blob by digest; the blob is
<root>/blobs/sha256-<hex>. The root is `OLLAMA_MODELS`, else ~/.ollama/models.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from iceburg_mlx.errors import BadModelFileError, ModelNotFoundError

MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
_NAME_RE = re.compile(r"^(?:(?P<host>[\w.\-]+\.[\w.\-]+(?::\d+)?)/)?(?:(?P<ns>[\w.\-]+)/)?"
                      r"(?P<model>[\w.\-]+)(?::(?P<tag>[\w.\-]+))?$")


def store_root() -> Path:
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def parse_name(name: str) -> tuple[str, str, str, str] | None:
    """`qwen2.5:7b` -> (registry, namespace, model, tag); None if it cannot be an Ollama name."""
    m = _NAME_RE.match(name)
    if not m:
        return None
    return (m["host"] or DEFAULT_REGISTRY, m["ns"] or DEFAULT_NAMESPACE, m["model"], m["tag"] or "latest")


def manifest_path(name: str, root: Path | None = None) -> Path | None:
    parts = parse_name(name)
    if parts is None:
        return None
    root = root or store_root()
    return root.joinpath("manifests", *parts)


def is_in_store(name: str, root: Path | None = None) -> bool:
    p = manifest_path(name, root)
    return p is not None and p.is_file()


def resolve_blob(name: str, root: Path | None = None) -> Path:
    """The GGUF blob for an Ollama model name; ModelNotFoundError when it is not pulled."""
    root = root or store_root()
    mpath = manifest_path(name, root)
    if mpath is None or not mpath.is_file():
        raise ModelNotFoundError(
            f"Ollama model '{name}' is not in the store at {root} (run `ollama pull {name}`, "
            "or set OLLAMA_MODELS to the store's directory)"
        )
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        layer = next(lay for lay in manifest.get("layers", []) if lay.get("mediaType") == MODEL_MEDIA_TYPE)
        digest = layer["digest"]
    except (ValueError, StopIteration, KeyError, AttributeError, TypeError) as e:
        raise BadModelFileError(f"{mpath}: not a valid Ollama manifest with a model layer ({e})") from None
    blob = root / "blobs" / digest.replace(":", "-")
    if not blob.is_file():
        raise ModelNotFoundError(f"Ollama model '{name}': blob {blob} named by {mpath} is missing")
    return blob
