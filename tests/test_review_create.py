"""Creating a review session on the tiny model: both sides answer once with the same decoding; the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from review_fixtures import REPO, REVIEW_N

from iceburg_mlx.errors import AdapterError, ConfigError
from iceburg_mlx.eval.bench import load_items
from iceburg_mlx.generation import generate
from iceburg_mlx.templates import chat_prompt
from iceburg_mlx.adapters import load_with_adapter
from iceburg_mlx.models import load_model
from iceburg_mlx.review.create import Side, create_session, role_system, with_system
from iceburg_mlx.sampling import SamplingParams


def test_session_holds_each_sides_own_greedy_answers(review_session, review_registry):
    gguf, adir = review_registry
    store = review_session.store
    meta = store.meta
    assert len(store) == REVIEW_N and meta["bench"] == "oracle"
    assert meta["sides"]["A"]["spec"] == "oracle@1" and meta["sides"]["A"]["adapter"] == str((adir / "oracle" / "1").resolve())
    assert meta["sides"]["B"]["adapter"] == str((adir / "oracle" / "2").resolve())
    assert meta["decoding"] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 24, "seed": 0}
    items = load_items("oracle", REPO / "data", REVIEW_N)
    assert [it.item_id for it in store.items] == [it.id for it in items]
    assert [it.messages for it in store.items] == [it.prompt for it in items]   # the bench's own messages
    assert sum(it.a_first for it in store.items) == REVIEW_N // 2
    assert review_session.identical < REVIEW_N // 2
    for side, attr in (("1", "answer_a"), ("2", "answer_b")):       # each side alone gives the same text
        m = load_with_adapter(str(gguf), adapter=str(adir / "oracle" / side))
        for it in store.items[:3]:
            want = generate(m.model, m.tokenizer, chat_prompt(m.tokenizer, it.messages), SamplingParams(max_tokens=24)).text
            assert getattr(it, attr) == want


def test_role_system_prompt_is_added_only_when_the_item_has_none(review_registry, tmp_path):
    _, adir = review_registry
    ad = shutil.copytree(adir / "oracle" / "1", tmp_path / "with-recipe")
    (ad / "recipe.yaml").write_text("role:\n  system_prompt: You are the oracle.\n")
    system = role_system([Side("base", None), Side("x", ad)])
    assert system == "You are the oracle."
    user = [{"role": "user", "content": "Claim."}]
    assert with_system(user, system) == [{"role": "system", "content": "You are the oracle."}, *user]
    own = [{"role": "system", "content": "Mine."}, *user]
    assert with_system(own, system) == own and with_system(user, None) == user
    assert role_system([Side("y", adir / "oracle" / "1")]) is None     # no recipe recorded


@pytest.mark.parametrize("a,b,kw,err,match", [
    ("oracle@1", "oracle@1", {}, ConfigError, "the same model"),
    ("base", "base", {}, ConfigError, "the same model"),
    ("oracle@9", "base", {}, AdapterError, "oracle@9"),
    ("oracle@1", "base", {"bench": "poetry"}, ConfigError, "no review rubric for bench 'poetry'"),
    ("oracle@1", "base", {"n": 0}, ConfigError, "--n must be >= 1"),
])
def test_bad_requests_fail_before_any_model_loads(review_registry, tmp_path, a, b, kw, err, match):
    gguf, adir = review_registry
    kw = {"bench": "oracle", **kw}
    with pytest.raises(err, match=match):
        create_session(tmp_path / "s.db", a, b, kw.pop("bench"), model=str(gguf), adapters_dir=adir,
                       data_dir=REPO / "data", **kw)
    assert not (tmp_path / "s.db").exists()


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "iceburg_mlx.cli", "review", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def _one_line_error(r, needle):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr


def test_cli_create_add_rater_report(review_registry, tmp_path):
    gguf, adir = review_registry
    out = tmp_path / "cli.db"
    r = _cli("create", "--a", "oracle@1", "--b", "base", "--bench", "oracle", "--n", 3, "--max-tokens", 6,
             "--model", gguf, "--adapters-dir", adir, "--data-dir", REPO / "data", "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out) and "A = oracle@1" in r.stderr and "B = base" in r.stderr
    r = _cli("add-rater", out, "alice")
    assert r.returncode == 0 and r.stdout.startswith("http://127.0.0.1:8090/#rater=alice&token="), r.stderr
    r = _cli("report", out, "--to-pairs", tmp_path / "pairs.jsonl")
    assert r.returncode == 0, r.stderr
    assert "base (B) vs oracle@1 (A): no judgments yet" in r.stdout and "wrote 0 DPO pairs" in r.stderr
    assert (tmp_path / "cli-report" / "report.md").is_file() and (tmp_path / "pairs.jsonl").read_text() == ""
    _one_line_error(_cli("create", "--a", "oracle@1", "--b", "base", "--bench", "oracle", "--out", out,
                         "--adapters-dir", adir), "already exists")
    _one_line_error(_cli("report", tmp_path / "missing.db"), "no such review session")
    _one_line_error(_cli("add-rater", out, "alice"), "already exists")


def test_judged_pairs_load_as_dpo_training_data(review_session, review_registry, tmp_path):
    from review_fixtures import judge

    from iceburg_mlx.review.report import write_pairs
    from iceburg_mlx.review.store import ReviewStore
    from iceburg_mlx.train.prefs import build_pref_examples

    gguf, _ = review_registry
    path = tmp_path / "s.db"
    shutil.copy(review_session.store.path, path)
    store = ReviewStore(path)
    for idx, pref in enumerate(["A", "B", "tie", "B"]):
        judge(store, "ann", idx, pref, 2, 4)
    n = write_pairs(store, tmp_path / "pairs.jsonl")
    differ = sum(store.item(i).answer_a.strip() != store.item(i).answer_b.strip() for i in (0, 1, 3))
    assert n == differ
    tok = load_model(str(gguf)).tokenizer
    examples, report = build_pref_examples(tok, tmp_path / "pairs.jsonl", max_seq_len=2048)
    assert len(examples) == n
