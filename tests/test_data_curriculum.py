"""Novelty scores and curriculum orderings."""

from __future__ import annotations

import numpy as np
import pytest

from iceburg_mlx.data import synthetic
from iceburg_mlx.data.curriculum import CURRICULA, add_emergence_scores, get_curriculum, hashed_vectors, novelty_scores
from iceburg_mlx.errors import ConfigError


def test_hashed_vectors_unit_norm_and_similarity():
    v = hashed_vectors(["the cat sat on the mat", "the cat sat on the mat", "quantum chromodynamics lattice"])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] == pytest.approx(1.0, abs=1e-5) and abs(v[0] @ v[2]) < 0.3


def test_outlier_is_most_novel_and_duplicates_least():
    tpl = [r["messages"][-1]["content"] for r in synthetic.template_corpus(40, seed=1)]
    outlier = "Mitochondrial membrane potential collapses when uncouplers shuttle protons across the inner membrane."
    s = novelty_scores(tpl + [outlier])
    assert s.argmax() == len(tpl) and (0 <= s).all() and (s <= 1).all()
    assert s[:-1].max() < s[-1]


def test_orderings():
    odd = ("A wholly different answer about tide pools and barnacles: " * 6
           + "limpets graze algae films while anemones wait for the returning water to feed.")
    recs = add_emergence_scores(synthetic.template_corpus(20, seed=2) + [synthetic.chatml("q", odd, "odd")])
    assert set(CURRICULA) == {"weighted", "novel_first", "progressive"}
    nf = get_curriculum("novel_first")(recs)
    assert nf[0]["id"] == "odd"
    assert [r["emergence_score"] for r in nf] == sorted((r["emergence_score"] for r in recs), reverse=True)
    w1, w2 = get_curriculum("weighted")(recs, seed=1), get_curriculum("weighted")(recs, seed=1)
    assert [r["id"] for r in w1] == [r["id"] for r in w2] and sorted(r["id"] for r in w1) == sorted(r["id"] for r in recs)
    assert np.mean([r["sample_weight"] for r in w1]) == pytest.approx(1.0, abs=1e-3)
    pg = get_curriculum("progressive")(recs)
    assert sorted(r["id"] for r in pg) == sorted(r["id"] for r in recs)
    assert pg[-1]["id"] == "odd"  # longest and most novel: hardest
    with pytest.raises(ConfigError, match="supported: weighted"):
        get_curriculum("random")
