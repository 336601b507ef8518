"""Ollama Modelfile: the Go TEMPLATE renders what the model's Jinja chat template renders; the CLI."""

from __future__ import annotations

import iceburg_mlx  # noqa: F401  (OpenBLAS preload before mlx.core)
import json

import pytest
import tiny

from iceburg_mlx.errors import ExportError
from iceburg_mlx.export.gotemplate import render, render_ollama
from iceburg_mlx.export.modelfile import (
    FAMILIES,
    build_modelfile,
    detect_family,
    render_jinja,
)

SMOLLM2 = (  # SmolLM2-135M-Instruct's template: inserts a default system prompt
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = (  # Meta-Llama-3-8B-Instruct's template
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
MISTRAL = (  # Mistral-7B-Instruct-v0.2's template
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"},
     {"role": "user", "content": "Tell me a joke.\nA short one."}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
     {"role": "assistant", "content": "d"}, {"role": "user", "content": "e"}],
]
CASES = [("chatml", tiny.CHAT_TEMPLATE, "<|im_start|>", "<|im_end|>"),
         ("chatml", SMOLLM2, "<|im_start|>", "<|im_end|>"),
         ("llama3", LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
         ("mistral", MISTRAL, "<s>", "</s>")]


@pytest.mark.parametrize("family, template, bos, eos", CASES)
@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("system", [None, "You are Oracle, a terse assistant."])
def test_go_template_matches_jinja(family, template, bos, eos, conv, system):
    if system and family == "mistral":
        pytest.skip("the Mistral v0.2 template has no system role")
    mf = build_modelfile("m.gguf", template, bos=bos, eos=eos)
    assert mf.family == family and mf.verified, mf.mismatches
    msgs = ([{"role": "system", "content": system}] if system else []) + conv
    want = render_jinja(template, msgs, bos, eos)
    if "bos_token" in template:
        want = want[len(bos):]               # llama.cpp adds BOS as a token, not as text
    assert render_ollama(FAMILIES[family].template, msgs, mf.system) == want


def test_default_system_prompt_becomes_modelfile_system():
    mf = build_modelfile("m.gguf", SMOLLM2, bos="<|im_start|>", eos="<|im_end|>")
    assert mf.system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    role = build_modelfile("m.gguf", SMOLLM2, eos="<|im_end|>", system="You are Oracle.")
    assert role.system == "You are Oracle." and role.verified
    assert build_modelfile("m.gguf", tiny.CHAT_TEMPLATE).system is None


def test_modelfile_text():
    mf = build_modelfile("oracle.Q4_K_M.gguf", LLAMA3, bos="<|begin_of_text|>", eos="<|eot_id|>",
                         system="Be brief.", temperature=0.6, top_p=0.9)
    lines = mf.text.splitlines()
    assert lines[0] == "FROM ./oracle.Q4_K_M.gguf"
    assert 'PARAMETER stop "<|eot_id|>"' in lines and 'PARAMETER stop "<|start_header_id|>"' in lines
    assert "PARAMETER temperature 0.6" in lines and "PARAMETER top_p 0.9" in lines
    assert 'SYSTEM """Be brief."""' in lines
    assert f'TEMPLATE """{FAMILIES["llama3"].template}"""' in mf.text


def test_unknown_template_and_mistral_system():
    assert detect_family("{{ messages }}") is None
    mf = build_modelfile("m.gguf", "{{ messages }}", eos="</s>")
    assert "TEMPLATE" not in mf.text and mf.family is None and 'PARAMETER stop "</s>"' in mf.text
    with pytest.raises(ExportError, match="no system role"):
        build_modelfile("m.gguf", MISTRAL, system="x")


def test_renderer_constructs():
    src = ('{{ if .System }}S={{ .System }};{{ else }}none;{{ end }}{{ range .Messages }}'
           '{{ if eq .Role "user" }}U:{{ .Content }}{{ else if eq .Role "assistant" }}A:{{ .Content }}'
           '{{ else }}?{{ end }}|{{ end }}{{- "  x  " -}}  !')
    msgs = [{"Role": "user", "Content": "1"}, {"Role": "assistant", "Content": "2"}, {"Role": "tool", "Content": ""}]
    assert render(src, {"System": "", "Messages": msgs}) == "none;U:1|A:2|?|  x  !"
    assert render(src, {"System": "s", "Messages": []}).startswith("S=s;")
    with pytest.raises(ExportError):
        render("{{ if .X }}no end", {})


def test_cli_fuse_writes_gguf_modelfile_and_provenance(tiny_hf, tmp_path):
    from iceburg_mlx.cli.main import app
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, ["fuse", "--model", str(tiny_hf), "--to-gguf", "--quant", "q8_0", "--out",
                                 str(tmp_path), "--name", "Oracle", "--system", "You are Oracle.",
                                 "--temperature", "0.3"])
    assert r.exit_code == 0, r.output
    assert f"ollama create oracle -f {tmp_path / 'Modelfile'}" in r.output
    text = (tmp_path / "Modelfile").read_text()
    assert text.splitlines()[1] == "FROM ./Oracle.Q8_0.gguf" and 'SYSTEM """You are Oracle."""' in text
    assert json.loads((tmp_path / "fuse.json").read_text())["quant"] == "q8_0"


def test_cli_unknown_quant_fails_with_the_list(tmp_path):
    from iceburg_mlx.cli.main import app
    from typer.testing import CliRunner

    r = CliRunner().invoke(app, ["fuse", "--to-gguf", "--quant", "q2_k", "--out", str(tmp_path / "o")])
    assert isinstance(r.exception, ExportError) and "q4_k_m" in str(r.exception)  # run() prints it, exit 2
    assert not (tmp_path / "o").exists()
