import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import iceburg_mlx  # noqa: E402,F401  (OpenBLAS preload before anything imports mlx.core)

import tiny  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """Keep tokenizer caches of test models out of the user's cache, but share the default model."""
    from iceburg_mlx.models import default

    real_model = default.default_model_path()
    home = tmp_path_factory.mktemp("iceburg-home")
    (home / "models").mkdir()
    if real_model.is_file():
        (home / "models" / real_model.name).symlink_to(real_model)
    old = os.environ.get("ICEBURG_MLX_HOME")
    os.environ["ICEBURG_MLX_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("ICEBURG_MLX_HOME", None)
    else:
        os.environ["ICEBURG_MLX_HOME"] = old


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    return tiny.write_hf_dir(tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_hf, tmp_path_factory):
    """Factory: the tiny model as a GGUF file of the given type (cached per type)."""
    made: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("tiny-gguf")

    def make(qtype: str = "F32") -> Path:
        if qtype not in made:
            made[qtype] = tiny.write_gguf(tiny_hf, root / f"tiny-{qtype}.gguf", qtype)
        return made[qtype]

    return make


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    from iceburg_mlx.models import default

    path = default.default_model_path()
    if not path.is_file():
        pytest.fail(f"the embedded default model is missing at {path}: run `iceburg-mlx models fetch`")
    return path

from serve_fixtures import client, registry, server  # noqa: E402,F401  (server test fixtures)
from review_fixtures import review_registry, review_session  # noqa: E402,F401  (review test fixtures)
