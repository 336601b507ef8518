"""The command line as a user runs it: answers on stdout, one-line errors, exit codes."""

import json
import os
import subprocess
import sys

import pytest



def run(*args, env=None, stdin=None, timeout=300):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "iceburg_mlx.cli", *args], capture_output=True, text=True,
                          env=e, input=stdin, timeout=timeout)


def test_help_lists_the_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("generate", "chat", "doctor", "models", "data"):
        assert cmd in r.stdout


def test_help_does_not_import_mlx():
    code = "import sys; sys.argv=['iceburg-mlx','--help']\nfrom iceburg_mlx.cli.main import app\n" \
           "print('mlx.core' in sys.modules, 'mlx_lm' in sys.modules, 'transformers' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "False False False"


@pytest.mark.smollm
def test_generate_answers_paris_with_no_other_flag(smollm_path):
    r = run("generate", "--prompt", "What is the capital of France?")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "decode" in r.stderr and "tok/s" in r.stderr
    assert "tok/s" not in r.stdout


@pytest.mark.smollm
def test_chat_streams_multi_turn_from_stdin(smollm_path):
    script = ("What is the capital of France?\nWhat is the capital of Italy?\n/reset\n"
              "/system Answer in one short sentence.\nWhat is the capital of Japan?\n/bogus\n/exit\n")
    r = run("chat", "--max-tokens", "32", stdin=script)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and "Rome" in r.stdout and "Tokyo" in r.stdout
    assert "conversation cleared" in r.stderr and "unknown command /bogus" in r.stderr
    assert "Traceback" not in r.stderr


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_model_inputs_are_one_line(tmp_path, tiny_gguf):
    _one_line_error(run("generate", "-p", "hi", "--model", str(tmp_path / "absent.gguf")), "absent.gguf")
    notg = tmp_path / "notes.gguf"
    notg.write_text("hello, not a model at all " * 10)
    _one_line_error(run("generate", "-p", "hi", "--model", str(notg)), "not a GGUF")
    data = tiny_gguf("Q4_0").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    _one_line_error(run("generate", "-p", "hi", "--model", str(cut)), "truncated")
    _one_line_error(run("generate", "-p", "hi", "--model", "no-such-model"), "unknown model 'no-such-model'")
    _one_line_error(run("generate", "-p", "hi", "--model", "llama3.2:3b", env={"OLLAMA_MODELS": str(tmp_path)}),
                    "llama3.2:3b", "ollama pull")
    _one_line_error(run("generate", "-p", "hi", "--top-p", "0", "--model", str(tiny_gguf("F32"))), "top_p")


def test_unsupported_architecture_is_one_line(tmp_path):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _one_line_error(run("generate", "-p", "hi", "--model", str(tmp_path / "m.gguf")), "architecture 'mamba'")


def test_generate_on_a_tiny_model_with_seed_is_reproducible(tiny_gguf):
    args = ("generate", "-p", "the tin", "--model", str(tiny_gguf("F16")), "--temp", "0.8", "--seed", "3",
            "--max-tokens", "12")
    a, b = run(*args), run(*args)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.strip()


def test_doctor_json_reports_backend_and_setup(tiny_gguf):
    r = run("doctor", "--json", "--model", str(tiny_gguf("Q8_0")))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["mlx"]["backend"] in ("cpu", "metal", "cuda")
    advice = rep["training advice"]
    assert advice["batch_size"] >= 1 and advice["lora_rank"] > 0
    if sys.platform.startswith("linux"):
        setup = rep["linux cpu set-up"]
        assert setup["malloc tuned (GLIBC_TUNABLES)"] is True  # the CLI re-executes itself with it
        assert str(setup["OpenBLAS preloaded"]).endswith("libopenblas.so.0")
    assert "M" in rep["model"]["parameters"]
