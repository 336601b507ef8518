"""Dedup: the vectorised MinHash equals datasketch's, planted near duplicates are removed,
unique records survive, and split keeps near-duplicate clusters on one side."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from iceburg_mlx.data import minhash as mh
from iceburg_mlx.data import synthetic
from iceburg_mlx.data.dedup import DedupOptions, dedup_files, dedup_records, find_duplicates
from iceburg_mlx.data.formats import record_text
from iceburg_mlx.data.io import iter_jsonl, write_jsonl
from iceburg_mlx.data.split import assign_splits, split_file

TEXTS = ["Hello, World! this is a Test", "hello world this is a test", "", "one", "Ünïcode café, naïve!", "a b",
         "x " * 300]


def plain_word_shingles(text: str, k: int) -> list[int]:
    """Reference implementation in plain Python ints (mod 2^64) of minhash's shingle hashes."""
    m64 = (1 << 64) - 1

    def fmix(h):
        h ^= h >> 33
        h = (h * 0xFF51AFD7ED558CCD) & m64
        h ^= h >> 33
        h = (h * 0xC4CEB9FE1A85EC53) & m64
        return h ^ (h >> 33)

    words = re.findall(rb"[a-z0-9\x80-\xff]+", text.encode().lower())
    toks = [fmix(sum(c * pow(int(mh.BASE), i, 1 << 64) for i, c in enumerate(w)) & m64) for w in words]
    mix = [int(x) for x in mh._MIX]
    grams = []
    for i in range(len(toks) if len(toks) >= k else min(1, len(toks))):
        window = toks[i:i + k]
        if len(window) < k and len(toks) >= k:
            break
        grams.append(fmix(sum(t * mix[j % 4] * (2 * j + 1) for j, t in enumerate(window)) & m64) & 0xFFFFFFFF)
    return grams


@pytest.mark.parametrize("k", [1, 3])
def test_shingles_match_plain_python(k):
    h, doc = mh.shingle_hashes(TEXTS, mh.ShingleConfig(k=k))
    for j, t in enumerate(TEXTS):
        assert h[doc == j].tolist() == plain_word_shingles(t, k)


@pytest.mark.parametrize("unit,k", [("word", 3), ("char", 5)])
def test_signatures_equal_datasketch_minhash(unit, k):
    from datasketch import MinHash

    cfg = mh.ShingleConfig(k=k, unit=unit, num_perm=64, seed=3)
    h, doc = mh.shingle_hashes(TEXTS, cfg)
    sigs = mh.signatures(TEXTS, cfg, chunk=7)  # tiny chunks exercise the chunking
    for j in range(len(TEXTS)):
        m = MinHash(num_perm=64, seed=3, scheme="affine32", hashfunc=lambda x: x)
        m.update_batch([int(x) for x in h[doc == j]])
        np.testing.assert_array_equal(sigs[j], m.hashvalues)
    assert mh.jaccard(sigs[0], sigs[1]) == 1.0  # case and punctuation are normalised away


def test_planted_near_duplicates_removed_uniques_kept():
    recs, pairs = synthetic.near_duplicate_corpus(2000, 300, seed=11)
    texts = [record_text(r) for r in recs]
    removed = {i for i, (dup, _) in enumerate(find_duplicates(texts)) if dup >= 0}
    caught = sum(1 for a, b in pairs if a in removed or b in removed)
    assert caught / len(pairs) >= 0.95
    planted = {i for p in pairs for i in p}
    unique = [i for i in range(len(recs)) if i not in planted]
    wrongly = sum(1 for i in unique if i in removed)
    assert wrongly / len(unique) <= 0.05
    # at most one record survives from each planted family (original + its copies)
    families: dict[int, set[int]] = {}
    for a, b in pairs:
        families.setdefault(a, {a}).add(b)
    survivors = [len(f - removed) for f in families.values()]
    assert sum(s == 1 for s in survivors) / len(survivors) >= 0.95


def test_dedup_files_keeps_lines_verbatim_and_reports_clusters(tmp_path):
    base = synthetic.chatml("What is dark matter made of?", "Nobody knows yet; axions and WIMPs are candidates "
                            "that experiments keep constraining further every year.", "a", meta={"k": 1})
    exact = {**base, "id": "b"}
    near = synthetic.chatml("what is DARK matter made of", "Nobody knows yet; axions and WIMPs are candidates "
                            "that experiments keep constraining every year!", "c")
    other = synthetic.chatml("How do tides work?", "The moon's gravity stretches the oceans into two bulges.", "d")
    f1, f2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl(f1, [base, other])
    write_jsonl(f2, [exact, near])
    out = tmp_path / "out.jsonl"
    rep = dedup_files([f1, f2], out)
    assert (rep.records, rep.kept, rep.exact_removed, rep.near_removed) == (4, 2, 1, 1)
    assert len(rep.clusters) == 1 and rep.clusters[0].keep == f"{f1}:1"
    assert rep.clusters[0].removed == [f"{f2}:1", f"{f2}:2"]
    assert [r for _, r in iter_jsonl(out)] == [base, other]  # every field kept


def test_dedup_threshold_and_shingling_configurable():
    recs = [synthetic.chatml("q", "alpha beta gamma delta epsilon zeta eta theta", "1"),
            synthetic.chatml("q", "alpha beta gamma delta epsilon zeta eta iota", "2")]
    assert dedup_records(recs, DedupOptions(threshold=0.5))[1].near_removed == 1
    assert dedup_records(recs, DedupOptions(threshold=0.95))[1].near_removed == 0
    assert dedup_records(recs, DedupOptions(unit="char", k=4, threshold=0.6))[1].near_removed == 1


def test_assign_splits_keeps_clusters_and_is_deterministic():
    clusters = np.repeat(np.arange(300), np.random.default_rng(0).integers(1, 4, 300))
    a = assign_splits(clusters, 0.1, 0.1, seed=5)
    np.testing.assert_array_equal(a, assign_splits(clusters, 0.1, 0.1, seed=5))
    assert not np.array_equal(a, assign_splits(clusters, 0.1, 0.1, seed=6))
    for c in np.unique(clusters):
        assert len(set(a[clusters == c])) == 1
    n = len(clusters)
    assert abs((a == 1).sum() - 0.1 * n) <= 3 and abs((a == 2).sum() - 0.1 * n) <= 3


def test_split_file_no_near_duplicate_straddles(tmp_path):
    recs, pairs = synthetic.near_duplicate_corpus(400, 100, seed=3)
    src = tmp_path / "all.jsonl"
    write_jsonl(src, recs)
    rep = split_file(src, tmp_path / "out")
    rep2 = split_file(src, tmp_path / "out2")
    where = {}
    for name, path in rep.files.items():
        assert open(path, "rb").read() == open(rep2.files[name], "rb").read()
        for _, r in iter_jsonl(path):
            where[r["id"]] = name
    assert len(where) == 500 and sum(rep.counts.values()) == 500
    assert 40 <= rep.counts["valid"] <= 60
    straddles = sum(where[recs[a]["id"]] != where[recs[b]["id"]] for a, b in pairs)
    assert straddles <= len(pairs) * 0.02


def test_cli_dedup_and_split(tmp_path):
    from typer.testing import CliRunner

    from iceburg_mlx.cli.main import app

    recs, _ = synthetic.near_duplicate_corpus(50, 10, seed=1)
    src = tmp_path / "in.jsonl"
    write_jsonl(src, recs)
    runner = CliRunner()
    r = runner.invoke(app, ["data", "dedup", str(src), "--out", str(tmp_path / "d.jsonl"), "--report", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    assert "removed 0 exact and 10 near duplicates" in r.output
    assert len(json.loads((tmp_path / "r.json").read_text())["clusters"]) >= 8
    r = runner.invoke(app, ["data", "split", str(src), "--out", str(tmp_path / "s"), "--valid", "0.2", "--test", "0.1"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["test.jsonl", "train.jsonl", "valid.jsonl"]
