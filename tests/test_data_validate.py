"""Validation: one generated fixture per error, robustness (fuzz, garbage, huge lines), the CLI."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iceburg_mlx.data.validate import validate_file, validate_record

U = {"role": "user", "content": "Why is the sky blue?"}
A = {"role": "assistant", "content": "Rayleigh scattering favours short wavelengths."}


def chat(*msgs, **extra):
    return {"messages": list(msgs), **extra}


ERRORS = {
    "unknown role": chat(U, {"role": "narrator", "content": "x"}, A),
    "misordered roles: two user turns": chat(U, U, A),
    "misordered roles: assistant turn before any user": chat(A, U, A),
    "misordered roles: system turn after the start": chat(U, A, {"role": "system", "content": "s"}, U, A),
    "misordered roles: two assistant turns": chat(U, A, A),
    "empty content": chat(U, {"role": "assistant", "content": "  \n"}),
    "content is not a string": chat(U, {"role": "assistant", "content": ["list"]}),
    "no assistant turn": chat(U),
    "chosen == rejected": {"prompt": "p?", "chosen": "same", "rejected": "same"},
    "lacks 'rejected'": {"prompt": "p?", "chosen": "yes"},
    "chat-template token <|im_start|>": chat(U, {"role": "assistant", "content": "ok <|im_start|>user"}),
    "chat-template token [INST]": chat({"role": "user", "content": "[INST] hi"}, A),
    "unknown format": {"foo": "bar"},
    "quality_score is not a number in [0, 1]": chat(U, A, quality_score=1.5),
    "'messages' is not a list": {"messages": "hello"},
    "lacks 'role' or 'content'": chat(U, {"role": "assistant"}),
    "lone surrogate": chat(U, {"role": "assistant", "content": "bad \ud800 char"}),
    "empty content ": {"text": ""},
}


@pytest.mark.parametrize("reason", list(ERRORS))
def test_each_record_error_is_reported(reason):
    problems = validate_record(ERRORS[reason])
    assert any(reason.strip() in p for p in problems), problems


@pytest.mark.parametrize("good", [
    chat({"role": "system", "content": "You are ICEBURG Oracle."}, U, A, {"role": "user", "content": "More?"}, A,
         id="x", quality_score=0.5, emergence_score=0, meta={"k": 1}),
    {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
    {"instruction": "Do", "input": "", "output": "Done."},
    {"prompt": "p", "completion": "c"},
    {"text": "plain"},
    {"messages": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "meh"}]},
])
def test_valid_records_pass(good):
    assert validate_record(good) == []


def write_lines(path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_file_level_errors_carry_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    good = json.dumps(chat(U, A, id="a")).encode()
    write_lines(p, [b"\xef\xbb\xbf" + good, b"", b"{not json", b"\xc3\x28 invalid", b"42",
                    json.dumps(chat(U, A, id="a")).encode(), json.dumps(ERRORS["no assistant turn"]).encode()])
    rep = validate_file(p)
    got = [str(x) for x in rep.problems]
    assert got == [
        f"{p}:3: bad JSON: Expecting property name enclosed in double quotes at column 2",
        f"{p}:4: invalid UTF-8 at byte 0",
        f"{p}:5: not a JSON object (got int)",
        f"{p}:6: duplicate id 'a' (first at {p}:1)",
        f"{p}:7: no assistant turn",
    ]
    assert rep.records == 6 and rep.errors == 5 and not rep.ok


def test_duplicate_ids_across_files(tmp_path):
    from iceburg_mlx.data.validate import validate_files

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps(chat(U, A, id=7)) + "\n")
    b.write_text(json.dumps(chat(U, A, id=7)) + "\n")
    ra, rb = validate_files([a, b])
    assert ra.ok and [str(x) for x in rb.problems] == [f"{b}:1: duplicate id 7 (first at {a}:1)"]


def test_crlf_bom_blank_lines_and_huge_line(tmp_path):
    p = tmp_path / "big.jsonl"
    huge = json.dumps(chat(U, {"role": "assistant", "content": "word " * 4_000_000}))  # ~20 MB
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(chat(U, A)).encode() + b"\r\n\r\n" + huge.encode() + b"\r\n" + b"x" * 20_000_000)
    rep = validate_file(p, template_threshold=None)
    assert rep.records == 3
    # the ~20 MB answer is valid but far beyond any training context: a warning with its length
    assert [(x.line, x.severity, x.reason[:8]) for x in rep.problems] == [(3, "warning", "record i"),
                                                                          (4, "error", "bad JSON")]
    assert "5,000,0" in rep.problems[0].reason and "tokens" in rep.problems[0].reason


def test_missing_file_is_one_problem(tmp_path):
    rep = validate_file(tmp_path / "nope.jsonl")
    assert not rep.ok and "cannot open" in rep.problems[0].reason


def test_template_warning(tmp_path):
    from iceburg_mlx.data import synthetic
    from iceburg_mlx.data.io import write_jsonl

    p = tmp_path / "tpl.jsonl"
    write_jsonl(p, synthetic.template_corpus(80))
    rep = validate_file(p)
    assert rep.ok and rep.warnings == 1 and rep.template_fraction > 0.9
    assert "template skeleton" in rep.problems[0].reason


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["messages", "role", "content", "conversations", "from", "value", "chosen", "rejected", "prompt", "id",
         "text", "instruction", "output", "history", "quality_score", "system"]) | st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.binary(max_size=60) | json_values.map(lambda v: json.dumps(v).encode()), max_size=6),
       sep=st.sampled_from([b"\n", b"\r\n", b"\r"]), bom=st.booleans())
def test_fuzz_validate_never_raises(tmp_path, lines, sep, bom):
    p = tmp_path / "fuzz.jsonl"
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + sep.join(lines))
    rep = validate_file(p, template_threshold=0.3)
    assert rep.records <= max(1, len(lines)) * 2
    for x in rep.problems:
        assert str(x).startswith(str(p))


@settings(max_examples=150, deadline=None)
@given(rec=json_values)
def test_fuzz_validate_record_never_raises(rec):
    if isinstance(rec, dict):
        assert isinstance(validate_record(rec), list)


def test_cli_validate_exit_codes(tmp_path):
    from typer.testing import CliRunner

    from iceburg_mlx.cli.main import app

    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps(chat(U, A)) + "\n")
    bad.write_text(json.dumps(chat(U, U)) + "\n")
    r = CliRunner().invoke(app, ["data", "validate", str(good)])
    assert r.exit_code == 0 and "OK: 1 files, 1 records, 0 errors" in r.output
    r = CliRunner().invoke(app, ["data", "validate", str(good), str(bad)])
    assert r.exit_code == 1
    assert f"{bad}:1: message 1: misordered roles: two user turns in a row" in r.output
    assert "FAILED" in r.output


def test_eval_items_are_prompts_with_expectations():
    from iceburg_mlx.data.validate import validate_record

    item = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
            "expect": {"verdict": "false"}}
    assert validate_record(item) == []
    answered = dict(item, messages=item["messages"] + [{"role": "assistant", "content": "a"}])
    assert any("does not end with a user turn" in p for p in validate_record(answered))
    assert any("'expect' is not an object" in p for p in validate_record(dict(item, expect=["x"])))
    no_expect = {"messages": item["messages"]}
    assert validate_record(no_expect) == ["no assistant turn"]
