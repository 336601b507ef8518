"""Shared set-up for the server tests: a tiny base, two tiny role adapters in a tmp registry, a server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROLES = ("oracle", "surveyor")
ROUTER_DATA = {
    "oracle": ["Claim: {} is true.", "Is it true that {}?", "Claim: {}. True or false?", "Fact check: {}."],
    "surveyor": ["Summarize the research on {}.", "What does the literature say about {}?",
                 "Give me a research overview of {}.", "Survey the studies of {}."],
}
TOPICS = ["sleep", "coffee", "the moon", "vaccines", "batteries", "memory", "rain", "bees", "glass", "salt"]


def make_adapter(gguf: Path, out: Path, seed: int, rank: int, targets: tuple[str, ...], layers: int) -> Path:
    """apply_lora + random lora_b + save_adapters on the tiny base."""
    import mlx.core as mx

    from iceburg_mlx.models import load_model
    from iceburg_mlx.adapters.layers import adapter_layers, apply_lora
    from iceburg_mlx.adapters.files import save_adapters

    m = load_model(str(gguf))
    mx.random.seed(seed)
    apply_lora(m.model, {"rank": rank, "alpha": 2.0 * rank, "target_modules": targets, "layers": layers})
    for _, layer in adapter_layers(m.model):
        layer.lora_b = 0.5 * mx.random.normal(layer.lora_b.shape)
    return save_adapters(m.model, out)


def write_router_data(root: Path) -> Path:
    for role, templates in ROUTER_DATA.items():
        (root / role).mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"messages": [{"role": "user", "content": t.format(x)},
                                          {"role": "assistant", "content": "ok"}]})
                 for t in templates for x in TOPICS]
        (root / role / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def registry(tiny_gguf, tmp_path_factory):
    """(gguf path, adapters dir, {role: adapter dir}) with the router trained."""
    from iceburg_mlx.serve.router import train_router
    from iceburg_mlx.adapters import registry as reg

    gguf = tiny_gguf("F32")
    root = tmp_path_factory.mktemp("serve")
    adir = root / "adapters"
    shapes = {"oracle": (4, ("q_proj", "v_proj"), -1), "surveyor": (8, ("q_proj", "o_proj", "down_proj"), 1)}
    paths = {}
    for i, role in enumerate(ROLES):
        src = make_adapter(gguf, root / f"src-{role}", i, *shapes[role])
        reg.publish(src, role, adir)
        paths[role] = reg.publish(src, role, adir).path   # version 2: the newest is served
    train_router(write_router_data(root / "data"), list(ROLES)).save(adir)
    return gguf, adir, paths


@pytest.fixture(scope="module")
def server(registry):
    from iceburg_mlx.serve.protocol import Limits
    from iceburg_mlx.serve.runner import BackgroundServer
    from iceburg_mlx.serve.state import load_state

    gguf, adir, _ = registry
    state = load_state(str(gguf), list(ROLES), adir, Limits(max_tokens=64, max_body_bytes=64 * 1024), max_batch=16)
    with BackgroundServer(state) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
