"""What a new user hit (issue 16): a role that keeps its prompt through fuse and serve, warm-up that
trains from step 1, output that reads in a log, the CLI running the installed package, and the
smaller papercuts. The CLI runs in-process through `cli.main.main`."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from iceburg_mlx.cli.main import main

SYSTEM = "You are the tiny oracle. Begin with a verdict line."
WORDS = "the tin man went in to the thin end and then there was another inn".split()
REPO = Path(__file__).resolve().parents[1]


def write_data(path: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for i in range(n):
            q = " ".join(rng.choice(WORDS, size=4))
            a = "Verdict: true " + " ".join(rng.choice(WORDS, size=6))
            f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                             {"role": "assistant", "content": a}]}) + "\n")
    return path


def recipe_file(path: Path, base: Path, data: Path, **extra) -> Path:
    import yaml

    d = {"model": {"base": str(base)}, "role": {"name": "oracle", "system_prompt": SYSTEM},
         "data": {"train": str(data), "max_seq_len": 128}, "lora": {"rank": 4, "alpha": 8},
         "optim": {"lr": 5e-3}, "train": {"steps": 4, "batch_size": 2}, "eval": {"every": 0},
         "save": {"every": 0}, "seed": 0}
    for k, v in extra.items():
        sec, key = k.split("__")
        d.setdefault(sec, {})[key] = v
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_gguf):
    """A role adapter trained through the CLI and registered as oracle@1."""
    root = tmp_path_factory.mktemp("newcomer")
    base = tiny_gguf("F32")
    adapters = root / "adapters"
    rec = recipe_file(root / "oracle.yaml", base, write_data(root / "train.jsonl"))
    assert main(["train", str(rec), "--adapters-dir", str(adapters), "--runs-dir", str(root / "runs")]) == 0
    return {"root": root, "base": base, "adapters": adapters, "adapter": adapters / "oracle" / "1"}


def default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# -- 1. fuse: the role's name and prompt survive ---------------------------------------------------

def test_fuse_names_the_role_and_keeps_its_system_prompt(trained, capsys, monkeypatch):
    monkeypatch.setenv("ICEBURG_MLX_ADAPTERS", str(trained["adapters"]))
    out = trained["root"] / "exports" / "oracle"
    rc = main(["fuse", "--model", str(trained["base"]), "--adapter", "oracle", "--to-gguf", "--quant", "q8_0",
               "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert (out / "iceburg-oracle.Q8_0.gguf").is_file()
    assert f"ollama create iceburg-oracle -f {out / 'Modelfile'}" in text
    modelfile = (out / "Modelfile").read_text()
    assert f'SYSTEM """{SYSTEM}"""' in modelfile
    prov = json.loads((out / "fuse.json").read_text())
    assert prov["system_prompt"] == SYSTEM and prov["role"] == "oracle"
    # --system "" drops it; --name names it
    rc = main(["fuse", "--model", str(trained["base"]), "--adapter", "oracle", "--to-gguf", "--out", str(out / "b"),
               "--system", "", "--name", "mine"])
    text = capsys.readouterr().out
    assert rc == 0 and "ollama create mine " in text and "SYSTEM" not in (out / "b" / "Modelfile").read_text()
    # 14: exported and adapter files get the usual mode, not mkstemp's 0600
    for f in (out / "iceburg-oracle.Q8_0.gguf", out / "Modelfile", out / "fuse.json",
              trained["adapter"] / "adapters.safetensors", trained["adapter"] / "adapter_config.json"):
        assert stat.S_IMODE(f.stat().st_mode) == default_mode(), f


# -- 2. serve: a role is served under its training prompt ------------------------------------------

def test_serve_applies_the_role_prompt_when_the_request_has_none(trained):
    openai = pytest.importorskip("openai")
    from iceburg_mlx.generation import generate
    from iceburg_mlx.templates import chat_prompt
    from iceburg_mlx.adapters import load_with_adapter
    from iceburg_mlx.sampling import SamplingParams
    from iceburg_mlx.serve.runner import BackgroundServer
    from iceburg_mlx.serve.state import load_state

    params = SamplingParams(temperature=0.0, max_tokens=12)
    ref = load_with_adapter(str(trained["base"]), adapter=str(trained["adapter"]))
    question = [{"role": "user", "content": "the tin man"}]

    def local(messages):
        return generate(ref.model, ref.tokenizer, chat_prompt(ref.tokenizer, messages), params).text

    with_role = local([{"role": "system", "content": SYSTEM}, *question])
    bare = local(question)
    other = local([{"role": "system", "content": "Be a pirate."}, *question])
    assert with_role != bare  # otherwise the test could not tell the prompt was applied

    for role_prompts, want in ((True, with_role), (False, bare)):
        state = load_state(str(trained["base"]), ["oracle"], trained["adapters"], role_prompts=role_prompts)
        with BackgroundServer(state) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
            r = client.chat.completions.create(model="iceburg-oracle", messages=question, max_tokens=12,
                                               temperature=0)
            assert r.choices[0].message.content == want
            r = client.chat.completions.create(model="iceburg-oracle", max_tokens=12, temperature=0,
                                               messages=[{"role": "system", "content": "Be a pirate."}, *question])
            assert r.choices[0].message.content == other  # the request's own system message wins


# -- 10. warm-up trains from the first step --------------------------------------------------------

def test_warmup_reaches_a_nonzero_rate_on_step_one(trained, tmp_path):
    import mlx.core as mx

    from iceburg_mlx.train.schedule import make_schedule

    f = make_schedule("cosine", 1e-3, 20, warmup=4)
    lrs = [float(f(mx.array(i))) for i in range(6)]
    assert lrs[0] == pytest.approx(2.5e-4) and lrs[3] == pytest.approx(1e-3) and lrs[4] == pytest.approx(1e-3)
    rec = recipe_file(tmp_path / "r.yaml", trained["base"], write_data(tmp_path / "d.jsonl"),
                      train__steps=1, schedule__warmup=10)
    assert main(["train", str(rec), "--adapters-dir", str(tmp_path / "ad"), "--runs-dir", str(tmp_path / "runs")]) == 0
    w = mx.load(str(tmp_path / "ad" / "oracle" / "1" / "adapters.safetensors"))
    assert any(float(mx.abs(v).max()) > 0 for k, v in w.items() if k.endswith("lora_b")), \
        "one step of warm-up left the adapter equal to the base"


# -- 12. output that reads in a pipe or a log ------------------------------------------------------

def test_progress_is_a_line_per_update_when_not_a_terminal(monkeypatch):
    from rich.table import Table

    from iceburg_mlx.cli import ui

    buf = io.StringIO()
    con = ui.console(file=buf)
    assert not con.is_terminal and con.width == ui.PIPE_WIDTH
    monkeypatch.setattr(ui, "LINE_EVERY", 0.0)
    with ui.progress(con, "steps") as bar:
        assert isinstance(bar, ui.LineProgress)
        bar.every = 0.0
        t = bar.add_task("oracle", total=4, stats="")
        for i in range(1, 5):
            bar.update(t, completed=i, stats=f"loss {1.0 / i:.4f} peak 3973 MiB")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 4 and lines[1].startswith("oracle | 2/4 | loss 0.5000 peak 3973 MiB | ")
    assert "steps/s" in lines[1] and "ETA" in lines[1] and "ETA" not in lines[-1]
    t = Table()
    t.add_column("model")
    t.add_row("smollm2-135m-instruct-with-a-long-name")
    con.print(t)
    assert "smollm2-135m-instruct-with-a-long-name" in buf.getvalue()  # not folded at 80 columns


def test_training_in_a_pipe_logs_lines_with_rate_and_eta(trained, capsys, tmp_path):
    rec = recipe_file(tmp_path / "r.yaml", trained["base"], write_data(tmp_path / "d.jsonl"), train__steps=3)
    assert main(["train", str(rec), "--adapters-dir", str(tmp_path / "ad"), "--runs-dir", str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    steps = [ln for ln in err.splitlines() if ln.startswith("oracle | ")]
    assert steps and "3/3" in steps[-1] and "loss" in steps[-1] and "steps/s" in steps[-1], err
    assert all(len(ln) < 400 and "\x1b" not in ln for ln in err.splitlines())


# -- 13. the re-exec runs the installed package, not the working directory's -----------------------

def test_reexec_keeps_the_installed_package(tmp_path, trained):
    script = shutil.which("iceburg-mlx")
    if script is None:
        pytest.skip("the iceburg-mlx console script is not installed (pip install -e .)")
    fake = tmp_path / "iceburg_mlx"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise SystemExit('the working directory package was imported')\n")
    (fake / "cli").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "_ICEBURG_MLX_REEXEC")}
    data = write_data(tmp_path / "d.jsonl")
    r = subprocess.run([script, "data", "stats", str(data)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "working directory package" not in r.stderr + r.stdout


def test_help_names_the_program():
    r = subprocess.run([sys.executable, "-m", "iceburg_mlx.cli", "--help"], capture_output=True, text=True)
    assert r.stdout.startswith("Usage: iceburg-mlx ")


# -- 14. smaller papercuts -----------------------------------------------------------------------

def test_eval_explains_empty_calibration_columns(trained, capsys):
    rc = main(["eval", "--model", str(trained["base"]), "--bench", "general", "--n", "2", "--max-tokens", "4",
               "--no-perplexity", "--no-contamination", "--data-dir", str(REPO / "data")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "n/a" in out and "ECE and Brier (calibration) need a stated confidence" in out


def test_router_accuracy_and_routes_cover_only_served_roles(tmp_path):
    from iceburg_mlx.serve.router import train_router

    roles = {"oracle": "Claim: {} is true.", "surveyor": "Summarize the research on {}.",
             "synthesist": "Connect {} with biology."}
    topics = ["sleep", "coffee", "the moon", "vaccines", "batteries", "memory", "rain", "bees", "glass", "salt"]
    for role, t in roles.items():
        (tmp_path / role).mkdir()
        (tmp_path / role / "train.jsonl").write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": t.format(x)}, {"role": "assistant", "content": "ok"}]}) + "\n"
            for x in topics))
    router = train_router(tmp_path, list(roles), holdout=0.3)
    held = router.info["heldout"]
    labels, scores = np.array(held["labels"]), np.array(held["scores"])
    keep = labels != 2
    manual = float(np.mean(np.argmax(scores[keep][:, :2], axis=1) == labels[keep]))
    assert router.accuracy_among(["oracle", "surveyor"]) == pytest.approx(manual)
    for x in topics:
        assert router.route(f"Connect {x} with biology.", ["oracle", "surveyor"])[0] in ("oracle", "surveyor")


def test_dedup_says_what_it_left_out(tmp_path, capsys):
    recs = []
    for i in range(14):
        text = f"cluster {i} " + " ".join(WORDS) + f" tail {i} " * 3
        recs += [{"text": text}, {"text": text + " again"}]
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["data", "dedup", str(src), "--out", str(tmp_path / "o.jsonl"), "--show", "3"]) == 0
    out = capsys.readouterr().out
    n = out.count("kept ")
    assert n == 4  # 3 clusters shown + the summary line
    assert "more clusters not shown" in out


def test_chat_ctrl_c_at_the_prompt_exits_130_and_stats_say_interrupted(trained, monkeypatch, capsys):
    import builtins

    def interrupted(prompt=""):
        raise KeyboardInterrupt

    monkeypatch.setattr(builtins, "input", interrupted)
    assert main(["chat", "--model", str(trained["base"])]) == 130
    capsys.readouterr()

    from iceburg_mlx.chat import ChatSession
    from iceburg_mlx.models import load_model
    from iceburg_mlx.sampling import SamplingParams

    loaded = load_model(str(trained["base"]))
    s = ChatSession(loaded.model, loaded.tokenizer)
    gen = s.send("the tin man", SamplingParams(temperature=0.0, max_tokens=20))
    next(gen)
    gen.close()   # what Ctrl-C mid-answer does to the generator
    assert s.last_stats.finish_reason == "interrupted"


# -- 15. benchmarks name their missing peers at once ------------------------------------------------

def test_benchmarks_name_a_missing_peer_before_any_work():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import peers
    finally:
        sys.path.pop(0)
    assert peers.missing("mlx_lm", "no_such_peer_xyz") == ["no_such_peer_xyz"]
    if not peers.missing("mlx_lm_lora"):
        pytest.skip("mlx-lm-lora is installed here: the subprocess check below needs it missing")
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "dpo_step.py")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "mlx-lm-lora" in r.stderr and '.[bench]' in r.stderr
