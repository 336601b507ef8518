"""Collection: concurrent writers lose nothing; feedback becomes preference pairs."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from iceburg_mlx.data.collect import iter_events, log_feedback, log_interaction
from iceburg_mlx.data.pairs import feedback_pairs
from iceburg_mlx.errors import DataError

WRITERS, PER_WRITER = 8, 1000


def _writer(path: str, w: int) -> None:
    for i in range(PER_WRITER):
        # varying sizes (some lines > PIPE_BUF / 4 KiB) make interleaving likely without the lock
        answer = f"answer {w}-{i} " + "x" * ((i * 37) % 9000)
        log_interaction(path, [{"role": "user", "content": f"q {w}-{i}"}, {"role": "assistant", "content": answer}],
                        model="smollm2", adapter=f"a{w}", latency_ms=i * 0.5, id=f"{w}-{i}")


def test_parallel_writers_lose_and_corrupt_nothing(tmp_path):
    path = str(tmp_path / "log.jsonl")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, w)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = open(path, "rb").read().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == WRITERS * PER_WRITER
    ids = set()
    for raw in lines[:-1]:
        ev = json.loads(raw)  # every line intact
        w, i = map(int, ev["id"].split("-"))
        assert ev["messages"][1]["content"].startswith(f"answer {w}-{i} ") and ev["adapter"] == f"a{w}"
        ids.add(ev["id"])
    assert len(ids) == WRITERS * PER_WRITER


def _inter(path, iid, prompt, answer):
    return log_interaction(path, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                           model="m", latency_ms=1.0, id=iid)


def test_feedback_to_pairs(tmp_path):
    log = tmp_path / "log.jsonl"
    _inter(log, "e", "Define entropy.", "Disorder.")
    log_feedback(log, "e", "edit", edited="A measure of the number of microstates compatible with a macrostate.")
    _inter(log, "u", "Is P=NP?", "Unknown; most believe not.")
    _inter(log, "d", "Is  P=NP? ", "Yes, obviously.")
    log_feedback(log, "u", "up")
    log_feedback(log, "d", "down")
    _inter(log, "r1", "Name a prime.", "Nine.")
    _inter(log, "r2", "Name a prime.", "Fifteen.")
    _inter(log, "r3", "Name a prime.", "Seven.")
    log_feedback(log, "r1", "regenerate", replacement="r2")
    log_feedback(log, "r2", "regenerate", replacement="r3")
    log_feedback(log, "missing", "up")  # unknown interaction: ignored
    pairs = feedback_pairs([log])
    got = {(p["source"], p["chosen"], p["rejected"]) for p in pairs}
    assert got == {
        ("edit", "A measure of the number of microstates compatible with a macrostate.", "Disorder."),
        ("thumbs", "Unknown; most believe not.", "Yes, obviously."),
        ("regenerate", "Seven.", "Nine."),
        ("regenerate", "Seven.", "Fifteen."),
    }
    assert all(p["messages"][-1]["role"] == "user" for p in pairs)
    from iceburg_mlx.data.validate import validate_record
    assert all(validate_record(p) == [] for p in pairs)


def test_bad_feedback_raises(tmp_path):
    log = tmp_path / "l.jsonl"
    with pytest.raises(DataError):
        log_feedback(log, "x", "meh")
    with pytest.raises(DataError):
        log_feedback(log, "x", "edit")
    with pytest.raises(DataError):
        log_interaction(log, [{"role": "user", "content": "q"}], model="m")
    assert not log.exists()


def test_cli_pairs(tmp_path):
    from typer.testing import CliRunner

    from iceburg_mlx.cli.main import app

    log = tmp_path / "log.jsonl"
    _inter(log, "e", "Q?", "bad")
    log_feedback(log, "e", "edit", edited="good")
    out = tmp_path / "pairs.jsonl"
    r = CliRunner().invoke(app, ["data", "pairs", str(log), "--out", str(out)])
    assert r.exit_code == 0 and "1 preference pairs (edit 1)" in r.output
    assert [e["chosen"] for _, e in iter_events(out)] == ["good"]
