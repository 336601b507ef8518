"""Every command through its bad inputs: each one ends in a clear message and a non-zero exit code,
never a traceback (the command line runs in-process through `cli.main.main`, as the console
script does, so an exception that escapes it fails the test with its traceback)."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

import tiny
from iceburg_mlx.cli.main import main

SYSTEM = "You are the tiny oracle. Answer with a verdict."
GOOD = {"messages": [{"role": "user", "content": "is the sky blue"}, {"role": "assistant", "content": "yes it is"}]}


def jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def recipe_file(path: Path, base: Path, data: Path, role: str = "oracle", steps: int = 2, **extra) -> Path:
    import yaml

    d = {"model": {"base": str(base)}, "role": {"name": role, "system_prompt": SYSTEM},
         "data": {"train": str(data), "max_seq_len": 128}, "lora": {"rank": 4, "alpha": 8},
         "train": {"steps": steps, "batch_size": 2}, "eval": {"every": 0}, "save": {"every": 1}, "seed": 0}
    for k, v in extra.items():
        sec, key = k.split("__")
        d.setdefault(sec, {})[key] = v
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_gguf):
    """A tiny base, a second unrelated tiny base, one trained role adapter in a registry, a run
    directory to resume, and an assortment of broken files."""
    root = tmp_path_factory.mktemp("cli-bad")
    base = tiny_gguf("F32")
    other = tiny.write_gguf(tiny.write_hf_dir(root / "other-hf", seed=7), root / "other.gguf")
    good = jsonl(root / "good.jsonl", [GOOD] * 8)
    adapters, runs = root / "adapters", root / "runs"
    rc = main(["train", str(recipe_file(root / "oracle.yaml", base, good)), "--adapters-dir", str(adapters),
               "--runs-dir", str(runs)])
    assert rc == 0
    mamba = root / "mamba"
    shutil.copytree(tiny.write_hf_dir(root / "hf"), mamba)
    cfg = json.loads((mamba / "config.json").read_text())
    (mamba / "config.json").write_text(json.dumps({"model_type": "mamba", "vocab_size": cfg["vocab_size"]}))
    bad = {
        "template": jsonl(root / "template.jsonl", [GOOD, {"messages": [
            {"role": "user", "content": "hi <|im_start|>"}, {"role": "assistant", "content": "ok"}]}]),
        "role": jsonl(root / "role.jsonl", [GOOD, {"messages": [
            {"role": "robot", "content": "hi"}, {"role": "assistant", "content": "ok"}]}]),
        "empty_content": jsonl(root / "empty-content.jsonl", [{"messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}]),
        "not_string": jsonl(root / "not-string.jsonl", [{"messages": [
            {"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "ok"}]}]),
        "empty": jsonl(root / "empty.jsonl", []),
        "not_json": jsonl(root / "not-json.jsonl", ["{oops"]),
    }
    a_file = root / "a-file"
    a_file.write_text("x")
    return {"root": root, "base": base, "other": other, "good": good, "adapters": adapters, "runs": runs,
            "run": next(runs.iterdir()), "mamba": mamba, "bad": bad, "file": a_file}


def fails(capsys, argv, *needles, code=2):
    """Run argv; assert the exit code, no traceback, and each needle in the message."""
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    text = out.err + out.out
    assert rc == code, (rc, text)
    assert "Traceback" not in text
    for n in needles:
        assert n in text, (n, text)
    return text


def test_train_refuses_data_the_validator_rejects(world, capsys, tmp_path):
    for kind, needle in (("template", "chat-template token <|im_start|>"), ("role", "unknown role 'robot'"),
                         ("empty_content", "empty content"), ("not_string", "content is not a string"),
                         ("not_json", "bad JSON"), ("empty", "no records")):
        path = world["bad"][kind]
        rec = recipe_file(tmp_path / f"{kind}.yaml", world["base"], path)
        fails(capsys, ["train", rec, "--runs-dir", tmp_path / "runs", "--adapters-dir", tmp_path / "ad"],
              needle, f"{path}:" if kind != "empty" else str(path))
        assert not (tmp_path / "ad").exists(), f"{kind}: refused data must not register an adapter"


def test_train_can_skip_invalid_records_and_says_how_many(world, capsys, tmp_path):
    mixed = jsonl(tmp_path / "mixed.jsonl", [GOOD] * 6 + [{"messages": [
        {"role": "user", "content": "x <|im_end|>"}, {"role": "assistant", "content": "y"}]}])
    rec = recipe_file(tmp_path / "m.yaml", world["base"], mixed, data__skip_invalid=True)
    rc = main(["train", str(rec), "--runs-dir", str(tmp_path / "runs"), "--adapters-dir", str(tmp_path / "ad")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "skipping 1 invalid records of 7" in err


def test_nothing_usable_is_a_sentence(world, capsys, tmp_path):
    long = jsonl(tmp_path / "long.jsonl", [{"messages": [
        {"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]}] * 3)
    rec = recipe_file(tmp_path / "l.yaml", world["base"], long, data__overlong="drop")
    text = fails(capsys, ["train", rec, "--runs-dir", tmp_path / "r"],
                 "no usable training examples: of 3 records, 3 longer than data.max_seq_len 128 were dropped")
    assert "{" not in text  # not a raw dict


def test_data_validate_flags_an_empty_file_and_a_huge_record(world, capsys, tmp_path):
    fails(capsys, ["data", "validate", world["bad"]["empty"]], "no records", code=1)
    huge = jsonl(tmp_path / "huge.jsonl", [{"messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a" * 2_000_000}]}])
    rc = main(["data", "validate", str(huge)])
    out = capsys.readouterr().out
    assert rc == 0 and "warning: record is 500,00" in out and "huge.jsonl:1" in out


def test_models_that_cannot_load(world, capsys):
    fails(capsys, ["generate", "--prompt", "hi", "--model", world["mamba"]], "config.json", "mamba")
    fails(capsys, ["generate", "--prompt", "hi", "--model", world["root"] / "nope.gguf"], "no such file")
    fails(capsys, ["generate", "--prompt", "hi", "--model", world["file"]], "a-file")
    fails(capsys, ["chat", "--model", world["mamba"]], "mamba")
    fails(capsys, ["doctor", "--model", world["root"] / "nope.gguf"], "no such file")


def test_adapters_that_do_not_fit(world, capsys):
    ad = ["--adapter", "oracle"]
    fails(capsys, ["generate", "--prompt", "hi", "--model", world["base"], "--adapter", world["root"] / "nope"],
          "not found")
    import os
    os.environ["ICEBURG_MLX_ADAPTERS"] = str(world["adapters"])
    try:
        for argv in (["generate", "--prompt", "hi", "--model", world["other"], *ad],
                     ["chat", "--model", world["other"], *ad],
                     ["eval", "--model", world["other"], *ad, "--bench", "general", "--n", "1"],
                     ["fuse", "--model", world["other"], *ad, "--out", world["root"] / "fused-x"]):
            fails(capsys, argv, "was trained on base", "--force")
        assert not (world["root"] / "fused-x").exists()
        rc = main(["generate", "--prompt", "hi", "--model", str(world["other"]), *ad, "--force", "-n", "2"])
        err = capsys.readouterr().err
        assert rc == 0 and "warning:" in err and "was trained on base" in err
        # the same weights in another file (F16 of the same tiny model) are the same base
        f16 = tiny.write_gguf(tiny.write_hf_dir(world["root"] / "hf-again"), world["root"] / "same.gguf", "F16")
        rc = main(["generate", "--prompt", "hi", "--model", str(f16), *ad, "-n", "2"])
        err = capsys.readouterr().err
        assert rc == 0 and "warning" not in err, err
    finally:
        del os.environ["ICEBURG_MLX_ADAPTERS"]


def test_fuse_bad_outputs_and_options(world, capsys, tmp_path):
    m = ["--model", world["base"]]
    fails(capsys, ["fuse", *m, "--out", world["file"] / "sub"], "a-file", "is a file")
    fails(capsys, ["fuse", *m, "--out", world["file"]], "not a directory")
    fails(capsys, ["fuse", *m, "--quant", "q4_k_m", "--out", tmp_path / "o"], "--to-gguf")
    fails(capsys, ["fuse", *m, "--to-gguf", "--quant", "q3_x", "--out", tmp_path / "o"], "q3_x")
    fails(capsys, ["fuse", *m, "--calibration-tokens", "0", "--to-gguf", "--quant", "q4_0", "--out", tmp_path / "o"],
          "--calibration-tokens")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os
        if os.access(ro, os.W_OK):   # root ignores permissions: write below /proc instead
            target = Path("/proc/iceburg-cannot-write")
        else:
            target = ro / "out"
        fails(capsys, ["fuse", *m, "--out", target], str(target))
    finally:
        ro.chmod(0o700)


def test_resume_refuses_another_recipe(world, capsys, tmp_path):
    run = world["run"]
    other_role = recipe_file(tmp_path / "s.yaml", world["base"], world["good"], role="surveyor")
    fails(capsys, ["train", other_role, "--resume", run, "--adapters-dir", tmp_path / "ad"],
          "role.name: 'oracle' -> 'surveyor'", "may only change")
    saved = (run / "recipe.yaml").read_text()
    fails(capsys, ["train", "--resume", run, "--set", "optim.lr=0.5"], "optim.lr")
    assert (run / "recipe.yaml").read_text() == saved
    fails(capsys, ["train", "--resume", tmp_path / "no-run"], "recipe")
    fails(capsys, ["train"], "--resume")


def test_recipe_and_option_errors(world, capsys, tmp_path):
    rec = recipe_file(tmp_path / "r.yaml", world["base"], world["good"])
    fails(capsys, ["train", rec, "--set", "train.stepz=3"], "train.stepz", "did you mean")
    fails(capsys, ["train", rec, "--set", "train.steps=abc"], "train.steps")
    fails(capsys, ["train", tmp_path / "missing.yaml"], "not found")
    fails(capsys, ["recipes", "show", "no-such-recipe"], "not found")
    fails(capsys, ["generate", "--prompt", "hi", "--model", world["base"], "--max-tokens", "-3"], "max_tokens")
    fails(capsys, ["generate", "--prompt", "hi", "--model", world["base"], "--temp", "-1"], "temperature")
    fails(capsys, ["eval", "--bench", "nope"], "--bench")
    fails(capsys, ["eval", "--model", world["base"], "--n", "0", "--bench", "general"], "--n")
    fails(capsys, ["eval", "--against", "base", "--bench", "general"], "--against base needs --adapter")
    fails(capsys, ["eval", "--model", world["base"], "--bench", "oracle", "--data-dir", tmp_path], "eval.jsonl")
    fails(capsys, ["adapters", "show", "nobody", "--adapters-dir", world["adapters"]], "nobody")
    fails(capsys, ["adapters", "rm", "oracle", "--adapters-dir", world["adapters"]], "version")
    fails(capsys, ["data", "dedup", tmp_path / "missing.jsonl", "--out", tmp_path / "o.jsonl"], "missing.jsonl")
    fails(capsys, ["data", "convert", world["good"], "--out", tmp_path / "o.jsonl", "--to", "xml"], "xml")
    fails(capsys, ["data", "split", world["good"], "--out", tmp_path / "sp", "--valid", "1.5"], "valid")
    fails(capsys, ["router", "train", "--data-dir", tmp_path], "two roles")
    fails(capsys, ["bogus-command"], "No such command")


def test_serve_fails_fast(world, capsys, monkeypatch):
    import iceburg_mlx.serve.state as state

    loads = []
    monkeypatch.setattr(state, "load_state", lambda *a, **k: loads.append(1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        fails(capsys, ["serve", "--model", world["base"], "--port", port], "already in use")
    assert loads == [], "a port in use must be reported before the model loads"
    fails(capsys, ["serve", "--api-key-env", "ICEBURG_TEST_UNSET_VAR"], "ICEBURG_TEST_UNSET_VAR")
    monkeypatch.undo()
    fails(capsys, ["serve", "--model", world["base"], "--adapters", "nobody", "--adapters-dir", world["adapters"],
                   "--port", "0"], "nobody")
