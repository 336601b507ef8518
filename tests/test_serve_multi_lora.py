"""Side-by-side adapters: each batch row gets exactly its own adapter's output."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from serve_fixtures import make_adapter

from iceburg_mlx.errors import AdapterError
from iceburg_mlx.adapters import load_with_adapter
from iceburg_mlx.models import load_model
from iceburg_mlx.serve.multi_lora import AdapterSpec, MultiLoRALinear, attach_multi_lora


@pytest.fixture(scope="module")
def adapters(tiny_gguf, tmp_path_factory):
    gguf = tiny_gguf("F32")
    root = tmp_path_factory.mktemp("mlora")
    a = make_adapter(gguf, root / "a", 0, 4, ("q_proj", "v_proj"), -1)
    b = make_adapter(gguf, root / "b", 1, 8, ("q_proj", "o_proj", "down_proj"), 1)
    return gguf, a, b


def test_each_row_equals_its_single_adapter_model(adapters):
    gguf, a, b = adapters
    multi = load_model(str(gguf))
    sel = attach_multi_lora(multi.model, [AdapterSpec("a", a), AdapterSpec("b", b)])
    assert sum(isinstance(m, MultiLoRALinear) for _, m in multi.model.named_modules()) == 2 * 2 + 2
    x = mx.array([[5, 17, 40, 99, 7, 3]] * 4, dtype=mx.uint32)
    slots = [2, 0, 1, 2]
    sel.set(slots)
    got = multi.model(x)
    refs = {0: load_model(str(gguf)), 1: load_with_adapter(str(gguf), adapter=str(a)), 2: load_with_adapter(str(gguf), adapter=str(b))}
    for row, slot in enumerate(slots):
        want = refs[slot].model(x[row:row + 1])[0]
        np.testing.assert_allclose(np.array(got[row]), np.array(want), rtol=1e-4, atol=1e-4)
    # an adapter changes the output, so rows really differ
    assert not np.allclose(np.array(got[0]), np.array(got[1]), atol=1e-2)
    sel.set(None)
    np.testing.assert_array_equal(np.array(multi.model(x[:1])[0]), np.array(refs[0].model(x[:1])[0]))
    for slot in (1, 2):          # all rows on one adapter: only its block is multiplied
        sel.set([slot, slot])
        assert sel.single == slot
        got = multi.model(x[:2])
        np.testing.assert_allclose(np.array(got), np.array(refs[slot].model(x[:2])), rtol=1e-4, atol=1e-4)


def test_refuses_dora_and_misfits(adapters, tmp_path):
    gguf, a, _ = adapters
    import shutil

    dora = tmp_path / "dora"
    shutil.copytree(a, dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    cfg["fine_tune_type"] = "dora"
    (dora / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="supported: lora"):
        attach_multi_lora(load_model(str(gguf)).model, [AdapterSpec("d", dora)])
    bad = tmp_path / "bad"
    shutil.copytree(a, bad)
    w = mx.load(str(bad / "adapters.safetensors"))
    key = next(k for k in w if k.endswith("lora_a"))
    w[key] = mx.zeros((3, w[key].shape[1]))
    mx.save_safetensors(str(bad / "adapters.safetensors"), w)
    with pytest.raises(AdapterError, match="do not fit"):
        attach_multi_lora(load_model(str(gguf)).model, [AdapterSpec("x", bad)])
    with pytest.raises(AdapterError, match="unique"):
        attach_multi_lora(load_model(str(gguf)).model, [AdapterSpec("x", a), AdapterSpec("x", a)])


def test_engine_prefills_a_burst_of_requests_together(adapters):
    """Requests that arrive a few ms apart while the engine is idle join one prefill, so none of
    them decodes alone while the others wait for a second prefill."""
    import threading
    import time

    from iceburg_mlx.sampling import SamplingParams
    from iceburg_mlx.serve.engine import Engine, Job

    gguf, *_ = adapters
    loaded = load_model(str(gguf))
    engine = Engine(loaded.model, loaded.tokenizer).start()
    done = threading.Event()
    finished = []

    def sink(ev):
        if isinstance(ev, Exception) or ev.finish_reason is not None:
            finished.append(ev)
            if len(finished) == 4:
                done.set()

    try:
        for i in range(4):
            engine.submit(Job([5, 17, 40 + i], SamplingParams(temperature=0.0, max_tokens=1), 0, sink))
            time.sleep(0.003)
        assert done.wait(60)
    finally:
        engine.stop()
    assert all(not isinstance(ev, Exception) for ev in finished)
    assert engine.counters["peak_active"] == 4 and engine.counters["completed"] == 4
