"""The adapter registry: publish/resolve/list/remove, concurrent publishing, the CLI, loading by name."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iceburg_mlx.adapters import resolve_adapter_path
from iceburg_mlx.errors import AdapterError
from iceburg_mlx.adapters import registry
from iceburg_mlx.adapters.registry import (
    AdapterRef,
    list_entries,
    publish,
    remove,
    resolve,
)

CONFIG = {"fine_tune_type": "lora", "num_layers": 2, "base_model": "tiny-base",
          "lora_parameters": {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": ["self_attn.q_proj"]}}


def fake_adapter(path: Path, tag: str = "x", metrics: list[dict] | None = None, provenance: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapters.safetensors").write_text(tag)
    (path / "adapter_config.json").write_text(json.dumps(CONFIG))
    (path / "recipe.yaml").write_text("model:\n  base: tiny-base\nlora:\n  rank: 4\noptim:\n  lr: 1e-4\n")
    if metrics is not None:
        (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if provenance is not None:
        (path / "provenance.json").write_text(json.dumps(provenance))
    return path


@pytest.fixture
def reg(tmp_path, monkeypatch):
    """An empty registry, also the default one; the cwd is elsewhere so ./adapters is not touched."""
    root = tmp_path / "registry"
    monkeypatch.setenv(registry.ENV_VAR, str(root))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return root


def test_default_dir_env_then_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    assert registry.default_adapters_dir() == tmp_path / "adapters"
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path / "elsewhere"))
    assert registry.default_adapters_dir() == tmp_path / "elsewhere"


def test_publish_then_resolve_newest_and_by_version(reg, tmp_path):
    a = publish(fake_adapter(tmp_path / "run-a", "A"), "oracle")
    b = publish(fake_adapter(tmp_path / "run-b", "B"), "oracle")
    assert (a.version, b.version) == (1, 2) and b.name == "oracle@2"
    assert b.path == reg / "oracle" / "2" and (b.path / "recipe.yaml").is_file()
    assert (tmp_path / "run-a").is_dir()  # copied, not moved
    assert resolve("oracle") == b
    assert resolve("oracle@1") == a
    assert (resolve("oracle@1").path / "adapters.safetensors").read_text() == "A"
    other = tmp_path / "other"
    c = publish(fake_adapter(tmp_path / "run-c", "C"), "surveyor", adapters_dir=other, move=True)
    assert c == AdapterRef("surveyor", 1, other / "surveyor" / "1") and not (tmp_path / "run-c").exists()
    assert resolve("surveyor", adapters_dir=other) == c
    assert resolve_adapter_path("oracle@1") == a.path and resolve_adapter_path("oracle") == b.path
    assert not [p for p in (reg / "oracle").iterdir() if p.name.startswith(".")]


def test_unknown_names_and_versions(reg, tmp_path):
    publish(fake_adapter(tmp_path / "r1"), "oracle")
    publish(fake_adapter(tmp_path / "r2"), "oracle")
    with pytest.raises(AdapterError, match=r"^oracle@3 not found; versions: 1, 2$"):
        resolve("oracle@3")
    with pytest.raises(AdapterError, match=r"no adapter named 'dissident' in .*registry \(have: oracle\)"):
        resolve("dissident")
    with pytest.raises(AdapterError, match=r"registry .* has: oracle \(1, 2\)"):
        resolve_adapter_path("Not-A-Name!")
    with pytest.raises(AdapterError, match=r"no adapter named 'x' in .*empty"):
        resolve("x", adapters_dir=tmp_path / "void")
    assert resolve("Not-A-Name!") is None and resolve("some/dir") is None and resolve("a@b") is None


def test_publish_validates_source_and_role(reg, tmp_path):
    src = fake_adapter(tmp_path / "ok")
    for bad in ("Oracle", "-x", "a b", "", "a@1", "../x"):
        with pytest.raises(AdapterError, match="bad adapter role"):
            publish(src, bad)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterError, match=r"missing adapters\.safetensors"):
        publish(broken, "oracle")
    with pytest.raises(AdapterError, match="not a directory"):
        publish(tmp_path / "missing", "oracle")
    assert registry.roles() == []


def test_a_path_still_resolves_and_wins_over_a_name(reg, tmp_path):
    publish(fake_adapter(tmp_path / "r1", "registry"), "oracle")
    local = fake_adapter(tmp_path / "cwd" / "oracle", "local")   # ./oracle exists in the cwd
    assert resolve("oracle") is None
    assert resolve_adapter_path("oracle") == Path("oracle")
    assert resolve_adapter_path(str(local)) == local
    assert resolve_adapter_path(str(local / "adapters.safetensors")) == local
    assert registry.get("oracle").version == 1   # `get` (show/rm) only takes names
    with pytest.raises(AdapterError, match="missing adapters.safetensors"):
        (tmp_path / "empty").mkdir()
        resolve_adapter_path(str(tmp_path / "empty"))


def test_remove_requires_a_version(reg, tmp_path):
    publish(fake_adapter(tmp_path / "r1"), "oracle")
    publish(fake_adapter(tmp_path / "r2"), "oracle")
    with pytest.raises(AdapterError, match=r"explicit version: oracle@N \(versions: 1, 2\)"):
        remove("oracle")
    with pytest.raises(AdapterError, match="oracle@5 not found"):
        remove("oracle@5")
    assert remove("oracle@1") == AdapterRef("oracle", 1, reg / "oracle" / "1")
    assert sorted(p.name for p in (reg / "oracle").iterdir()) == ["2"]  # no trash left
    assert resolve("oracle").version == 2
    with pytest.raises(AdapterError, match="versions: 2$"):
        resolve("oracle@1")


def test_list_reads_metrics_provenance_and_eval(reg, tmp_path):
    from iceburg_mlx.eval.report import write_eval_json

    metrics = [{"step": 10, "train_loss": 2.5}, {"step": 10, "val_loss": 2.4}, {"step": 20, "train_loss": 2.0},
               {"step": 20, "val_loss": 2.6}, {"step": 30, "train_loss": float("nan")}]
    a = publish(fake_adapter(tmp_path / "r1", metrics=metrics,
                             provenance={"base": "smollm2-135m-instruct", "created": "2026-01-02T03:04:05+00:00"}),
                "oracle")
    with open(a.path / "metrics.jsonl", "a") as f:
        f.write("not json\n[1]\n")
    write_eval_json(a.path, {"schema": "iceburg-mlx/eval/1", "created": "2026-01-03T00:00:00+00:00",
                             "model": {"label": "oracle@1", "perplexity": None, "benches": {
                                 "oracle": {"n": 4, "accuracy": 0.75, "ci95": [0.3, 0.95], "mean_score": 0.8},
                                 "general": {"n": 2, "accuracy": 0.5, "ci95": [0.1, 0.9], "mean_score": 0.5}}}})
    publish(fake_adapter(tmp_path / "r2"), "dissident")
    (reg / "oracle" / ".staging-dead").mkdir()   # a crashed publish is not an entry
    (reg / "empty-role").mkdir()
    infos = list_entries()
    assert [i.name for i in infos] == ["dissident@1", "oracle@1"]
    d, o = infos
    assert d.base == "tiny-base" and d.metrics.steps is None and d.evals == {} and d.problems == ()
    assert o.base == "smollm2-135m-instruct" and o.created.isoformat() == "2026-01-02T03:04:05+00:00"
    m = o.metrics
    assert (m.steps, m.final_train_loss, m.best_val_loss, m.best_val_step) == (30, 2.0, 2.4, 10)
    assert o.evals == {"oracle": 0.75, "general": 0.5}
    (a.path / "eval.json").write_text("{truncated")
    assert "eval.json: cannot read" in list_entries()[1].problems[0]


def _publish_worker(src: str, root: str, barrier, queue) -> None:
    listed = registry._versions

    def slow_versions(role_dir):   # widen the list-then-rename window: without the lock, versions collide
        found = listed(role_dir)
        time.sleep(0.15)
        return found

    registry._versions = slow_versions
    barrier.wait()
    try:
        queue.put((src, publish(Path(src), "oracle", adapters_dir=root).version))
    except (AdapterError, OSError) as e:  # reported, not hung on
        queue.put((src, repr(e)))


def test_concurrent_publishing_gets_distinct_versions(tmp_path):
    root = tmp_path / "registry"
    n = 6
    srcs = [str(fake_adapter(tmp_path / f"run-{i}", f"run-{i}" * 2000)) for i in range(n)]
    ctx = mp.get_context("spawn")   # no fork after MLX's threads may have started
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_publish_worker, args=(s, str(root), barrier, queue)) for s in srcs]
    for p in procs:
        p.start()
    got = dict(queue.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(got.values()) == list(range(1, n + 1))
    for src, version in got.items():
        entry = root / "oracle" / str(version)
        assert (entry / "adapters.safetensors").read_text() == Path(src, "adapters.safetensors").read_text()
        assert sorted(x.name for x in entry.iterdir()) == ["adapter_config.json", "adapters.safetensors",
                                                           "recipe.yaml"]
    assert sorted(x.name for x in (root / "oracle").iterdir()) == [str(v) for v in range(1, n + 1)]


def cli(*args, cwd=None, env=None):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "iceburg_mlx.cli", "adapters", *args], capture_output=True,
                          text=True, cwd=cwd, env=e, timeout=60, check=False)


def test_cli_list_show_rm(reg, tmp_path):
    from iceburg_mlx.cli.main import app
    from typer.testing import CliRunner

    from iceburg_mlx.eval.report import write_eval_json

    a = publish(fake_adapter(tmp_path / "r1", metrics=[{"step": 5, "train_loss": 1.5}, {"step": 5, "val_loss": 1.25}],
                             provenance={"base": "tiny-base", "data": "data/oracle/train.jsonl"}), "oracle")
    write_eval_json(a.path, {"created": "2026-01-03T00:00:00+00:00", "verdicts": ["better on oracle"],
                             "model": {"label": "oracle@1", "perplexity": {"perplexity": 7.5, "tokens": 10},
                                       "benches": {"oracle": {"n": 4, "accuracy": 0.75, "ci95": [0.3, 0.95],
                                                              "mean_score": 0.8}}}})
    publish(fake_adapter(tmp_path / "r2"), "oracle")
    d = ["--adapters-dir", str(reg)]
    r = cli("list", *d, env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "oracle@1" in r.stdout and "oracle@2" in r.stdout and "1.5000" in r.stdout and "1.2500" in r.stdout
    assert "oracle 75%" in r.stdout and "tiny-base" in r.stdout
    r = cli("list", "--json", *d)
    rows = json.loads(r.stdout)
    assert [x["name"] for x in rows] == ["oracle@1", "oracle@2"] and rows[0]["eval"] == {"oracle": 0.75}
    r = cli("show", "oracle@1", *d)
    assert r.returncode == 0, r.stderr
    for text in ("oracle@1", "rank 4", "data: data/oracle/train.jsonl", "optim.lr=1e-4", "final train loss 1.5000",
                 "best valid loss 1.2500 (step 5)", "accuracy 75%", "perplexity 7.500", "better on oracle"):
        assert text in r.stdout, text
    for args, msg in ((("show", "Bad Name!"), "is not an adapter name"), (("rm", "oracle"), "explicit version")):
        r = cli(*args, *d)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (args, r.stderr)
        assert msg in r.stderr
    r = cli("rm", "oracle@1", cwd=tmp_path)   # default dir from $ICEBURG_MLX_ADAPTERS
    assert r.returncode == 0 and "removed oracle@1" in r.stdout
    assert [i.name for i in list_entries()] == ["oracle@2"]
    runner = CliRunner()   # the rest in-process (each subprocess costs a second)
    assert runner.invoke(app, ["adapters", "show", "oracle"]).stdout.startswith("oracle@2")
    assert "no adapters in" in runner.invoke(app, ["adapters", "list", "--adapters-dir", str(tmp_path / "no")]).stdout
    for args, msg in ((["show", "nope"], "no adapter named 'nope'"), (["rm", "oracle@9"], "oracle@9 not found")):
        r = runner.invoke(app, ["adapters", *args])
        assert isinstance(r.exception, AdapterError) and msg in str(r.exception)


def test_load_model_attaches_a_registry_adapter(reg, tmp_path, tiny_gguf):
    import mlx.core as mx

    from iceburg_mlx.adapters import load_with_adapter
    from iceburg_mlx.models import load_model
    from iceburg_mlx.adapters.layers import adapter_layers, apply_lora
    from iceburg_mlx.adapters.files import save_adapters

    gguf = str(tiny_gguf("F32"))
    trained = load_model(gguf)
    apply_lora(trained.model, {"rank": 4, "alpha": 8.0, "target_modules": ("q_proj", "v_proj"), "layers": -1})
    mx.random.seed(3)
    for _, layer in adapter_layers(trained.model):
        layer.lora_b = 0.5 * mx.random.normal(layer.lora_b.shape)
    publish(save_adapters(trained.model, tmp_path / "run"), "oracle")
    tokens = mx.array([[5, 9, 40, 77, 12]])
    want = trained.model(tokens)
    base = load_model(gguf).model(tokens)
    loaded = load_with_adapter(gguf, adapter="oracle")
    got = loaded.model(tokens)
    assert loaded.info["adapter_name"] == "oracle@1" and loaded.info["adapter"] == str(reg / "oracle" / "1")
    assert mx.allclose(got, want, atol=1e-4).item() and not mx.allclose(got, base, atol=1e-2).item()
    with pytest.raises(AdapterError, match="oracle@2 not found"):
        load_with_adapter(gguf, adapter="oracle@2")


def test_an_adapter_brings_its_training_system_prompt(reg, tmp_path, tiny_gguf):
    """generate/chat --adapter without --system answer under the system prompt the adapter was
    trained with (its recipe's role.system_prompt); --system overrides, '' means none."""
    from typer.testing import CliRunner

    from iceburg_mlx.adapters import role_system_prompt
    from iceburg_mlx.cli.main import app
    from iceburg_mlx.models import load_model
    from iceburg_mlx.adapters.layers import apply_lora
    from iceburg_mlx.adapters.files import save_adapters

    gguf = str(tiny_gguf("F32"))
    m = load_model(gguf)
    apply_lora(m.model, {"rank": 4, "alpha": 8.0, "target_modules": ("q_proj",), "layers": -1})
    src = save_adapters(m.model, tmp_path / "run")
    (src / "recipe.yaml").write_text("role:\n  name: oracle\n  system_prompt: 'Answer with one verdict line.'\n")
    publish(src, "oracle")
    publish(fake_adapter(tmp_path / "plain"), "surveyor")
    assert role_system_prompt("oracle") == "Answer with one verdict line."
    assert role_system_prompt("surveyor") is None

    def run(*extra):
        r = CliRunner().invoke(app, ["generate", "--model", gguf, "--adapter", "oracle", "--prompt", "the tin man",
                                     "--max-tokens", "12", *extra])
        assert r.exit_code == 0, r.output
        return r.stdout

    default, explicit = run(), run("--system", "Answer with one verdict line.")
    assert default == explicit
    assert run("--system", "") != default or run("--system", "Something else entirely.") != default
