"""Formats: detection, normalisation to ChatML, conversion (fields kept), JSONL reading/writing."""

from __future__ import annotations

import json

import pytest

from iceburg_mlx.data import formats
from iceburg_mlx.data.io import iter_jsonl, write_jsonl
from iceburg_mlx.errors import DataError

SYS = {"role": "system", "content": "You are ICEBURG Surveyor."}
U = {"role": "user", "content": "Research fusion energy."}
A = {"role": "assistant", "content": "Tokamak confinement times improved after..."}

CASES = {
    "chatml": ({"messages": [SYS, U, A], "id": "c1", "quality_score": 0.9, "meta": {"src": "x"}}, [SYS, U, A]),
    "sharegpt": (
        {"conversations": [{"from": "system", "value": SYS["content"]}, {"from": "human", "value": U["content"]},
                           {"from": "gpt", "value": A["content"]}], "id": "s1"},
        [SYS, U, A],
    ),
    "alpaca": (
        {"instruction": "Research", "input": "fusion energy.", "output": A["content"], "id": "a1"},
        [{"role": "user", "content": "Research\n\nfusion energy."}, A],
    ),
    "completion": ({"prompt": U["content"], "completion": A["content"], "id": "p1"}, [U, A]),
    "text": ({"text": "Plain pretraining text.", "id": "t1"}, [{"role": "assistant", "content": "Plain pretraining text."}]),
    "preference": (
        {"prompt": U["content"], "chosen": A["content"], "rejected": "I cannot help.", "id": "d1"},
        [U, A],
    ),
}


@pytest.mark.parametrize("fmt", list(CASES))
def test_detect_and_normalise_each_format(fmt):
    record, expected = CASES[fmt]
    assert formats.detect_format(record) == fmt
    assert formats.to_messages(record) == expected


def test_preference_with_messages_and_conversational_answers():
    rec = {"messages": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "no"}]}
    assert formats.detect_format(rec) == "preference"
    prompt, chosen, rejected = formats.preference_parts(rec)
    assert prompt == [U] and chosen == A["content"] and rejected == "no"


def test_multi_turn_alpaca_history_roundtrip():
    msgs = [SYS, U, A, {"role": "user", "content": "And stellarators?"}, {"role": "assistant", "content": "Also."}]
    alp = formats.from_messages(msgs, "alpaca")
    assert alp["history"] == [[U["content"], A["content"]]] and alp["system"] == SYS["content"]
    assert formats.to_messages(alp) == msgs


@pytest.mark.parametrize("to", formats.TARGETS)
@pytest.mark.parametrize("fmt", [f for f in CASES if f != "text"])
def test_convert_keeps_unused_fields_and_content(fmt, to):
    record, expected = CASES[fmt]
    out = formats.convert_record(record, to)
    assert out["id"] == record["id"]
    if "quality_score" in record:
        assert out["quality_score"] == record["quality_score"] and out["meta"] == record["meta"]
    if fmt == "preference":
        assert out["chosen"] == record["chosen"] and out["rejected"] == record["rejected"]
    else:
        assert formats.to_messages(out) == expected
        assert formats.detect_format(out) == to


def test_unknown_format_and_role_raise_data_error():
    with pytest.raises(DataError, match="unknown format"):
        formats.to_messages({"foo": 1})
    with pytest.raises(DataError, match="unknown role"):
        formats.to_messages({"conversations": [{"from": "narrator", "value": "x"}]})
    with pytest.raises(DataError, match="alpaca"):
        formats.convert_record({"messages": [A]}, "alpaca")


def test_iter_jsonl_tolerates_bom_crlf_blank_lines(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n\r\n  \n{"text": "b"}\r\n{"text": "c"}')
    assert [(n, r["text"]) for n, r in iter_jsonl(p)] == [(1, "a"), (4, "b"), (5, "c")]


@pytest.mark.parametrize("line,reason", [(b"{bad", "bad JSON"), (b"[1]", "not a JSON object"), (b"\xff\xfe", "invalid UTF-8")])
def test_iter_jsonl_bad_line_names_file_and_line(tmp_path, line, reason):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"text": "ok"}\n' + line + b"\n")
    with pytest.raises(DataError) as e:
        list(iter_jsonl(p))
    assert str(e.value).startswith(f"{p}:2: {reason}")


def test_write_jsonl_atomic_leaves_no_partial_file(tmp_path):
    out = tmp_path / "out.jsonl"
    write_jsonl(out, [{"text": "old"}])

    def gen():
        yield {"text": "new"}
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(out, gen())
    assert json.loads(out.read_text()) == {"text": "old"}
    assert [f.name for f in tmp_path.iterdir()] == ["out.jsonl"]


def test_convert_file_and_cli(tmp_path):
    from typer.testing import CliRunner

    from iceburg_mlx.cli.main import app

    src = tmp_path / "in.jsonl"
    write_jsonl(src, [CASES["chatml"][0], CASES["alpaca"][0]])
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(app, ["data", "convert", str(src), "--out", str(out), "--to", "sharegpt"])
    assert res.exit_code == 0, res.output
    rows = [r for _, r in iter_jsonl(out)]
    assert [r["id"] for r in rows] == ["c1", "a1"]
    assert all("conversations" in r for r in rows) and rows[0]["meta"] == {"src": "x"}
