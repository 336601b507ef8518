"""The review session store: WAL file, balanced sides, per-rater order, judgments mapped to A/B, tokens."""

from __future__ import annotations

import sqlite3

import pytest
from review_fixtures import full_scores, synthetic_store

from iceburg_mlx.errors import IceburgError, ReviewError
from iceburg_mlx.review.store import ReviewStore, balanced_sides


@pytest.fixture
def store(tmp_path):
    return synthetic_store(tmp_path / "s.db", n=11)


def test_session_file_is_wal_and_reads_back(store, tmp_path):
    con = sqlite3.connect(store.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    again = ReviewStore(store.path)
    assert len(again) == 11 and again.meta["sides"]["B"]["spec"] == "oracle@4"
    assert again.criteria == ("verdict", "reasons", "calibration")
    assert [it.item_id for it in again.items] == [f"oracle-eval-{i:03d}" for i in range(11)]
    assert not list(tmp_path.glob(".*.tmp"))        # the temporary file is gone
    with pytest.raises(ReviewError, match="already exists"):
        synthetic_store(store.path, n=3)


def test_sides_are_balanced_and_shown_as_stored(store):
    assert sum(balanced_sides(11, 0)) == 6 and sum(balanced_sides(10, 5)) == 5
    assert balanced_sides(40, 1) != balanced_sides(40, 2)
    for it in store.items:
        assert it.responses() == ((it.answer_a, it.answer_b) if it.a_first else (it.answer_b, it.answer_a))
    assert sum(it.a_first for it in store.items) == 6


def test_each_rater_has_a_stable_permutation_of_the_items(store):
    alice = store.rater("alice", create=True)
    bob = store.rater("bob", create=True)
    assert sorted(alice.order) == list(range(11)) == sorted(bob.order)
    assert alice.order != bob.order
    assert store.rater("alice").order == alice.order          # read back, not re-drawn
    assert store.rater("carol") is None                      # unknown, not created
    assert store.raters() == ["alice", "bob"]


def test_judgments_map_positions_to_sides_and_replace_on_resave(store):
    alice = store.rater("alice", create=True)
    a_first = next(it for it in store.items if it.a_first)
    b_first = next(it for it in store.items if not it.a_first)
    scores = {"1": {"verdict": 5, "reasons": 4, "calibration": 3}, "2": {"verdict": 1, "reasons": 2, "calibration": 2}}
    j1 = store.save_judgment(alice, a_first.idx, "1", scores, " good ")
    j2 = store.save_judgment(alice, b_first.idx, "1", scores)
    assert (j1.preferred, j1.scores_a["verdict"], j1.scores_b["verdict"], j1.comment) == ("A", 5, 1, "good")
    assert (j2.preferred, j2.scores_a["verdict"], j2.scores_b["verdict"]) == ("B", 1, 5)
    assert store.save_judgment(alice, b_first.idx, "2", scores).preferred == "A"
    assert store.save_judgment(alice, b_first.idx, "tie", scores).preferred == "tie"
    got = store.judgments("alice")
    assert len(got) == 2 and store.judged("alice") == {a_first.idx, b_first.idx}
    back = store.judgment("alice", b_first.idx)
    assert back.choice == "tie" and back.shown_scores(b_first.a_first) == scores


@pytest.mark.parametrize("choice,scores,comment,match", [
    ("x", None, "", "choose Response 1, tie or Response 2"),
    ("1", {"1": {"verdict": 3}, "2": {}}, "", "score every criterion"),
    ("1", "bad", "", "scores must be an object"),
    ("2", {"1": {"verdict": 6, "reasons": 3, "calibration": 3}}, "", "from 1 to 5"),
    ("2", {"1": {"verdict": "3", "reasons": 3, "calibration": 3}}, "", "from 1 to 5"),
    ("2", {"1": {"verdict": True, "reasons": 3, "calibration": 3}}, "", "from 1 to 5"),
    ("tie", None, "x" * 2001, "at most 2000"),
])
def test_bad_judgments_are_refused_with_one_clear_line(store, choice, scores, comment, match):
    alice = store.rater("alice", create=True)
    if scores is None:
        scores = full_scores(store)
    elif isinstance(scores, dict) and "2" not in scores:
        scores = {**scores, "2": full_scores(store)["2"]}
    with pytest.raises(ReviewError, match=match) as e:
        store.save_judgment(alice, 0, choice, scores, comment)
    assert isinstance(e.value, IceburgError) and "\n" not in str(e.value)
    assert store.judgments() == []


def test_tokens_close_the_session(store):
    assert not store.has_tokens()
    token = store.invite("alice")
    assert store.has_tokens() and len(token) >= 20
    assert store.rater("alice", token).has_token
    assert store.rater("alice", token + "x") is None and store.rater("alice") is None
    store.add_rater("bob", "bobs-token")
    assert store.rater("bob", token) is None                 # alice's token is not bob's
    with pytest.raises(ReviewError, match="already exists"):
        store.add_rater("alice", "other")
    with sqlite3.connect(store.path) as con:                  # only the hash is stored
        assert token not in str(con.execute("SELECT * FROM raters").fetchall())


@pytest.mark.parametrize("name", ["", " x", "../etc", "a" * 41, "al<i>ce", None])
def test_bad_rater_names(store, name):
    with pytest.raises(ReviewError, match="rater name"):
        store.rater(name, create=True)


def test_not_a_session(tmp_path):
    with pytest.raises(ReviewError, match="no such review session"):
        ReviewStore(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ReviewError, match="not a review session"):
        ReviewStore(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ReviewError, match="not a review session"):
        ReviewStore(other)
