"""The iceburg-auto router: hashed n-gram features + NumPy multinomial logistic regression."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from serve_fixtures import write_router_data

from iceburg_mlx.errors import DataError
from iceburg_mlx.serve.router import (
    ROUTER_NPZ,
    _softmax,
    features,
    fit_logreg,
    load_router,
    train_router,
)


def test_features_are_deterministic_and_normalised():
    x = features(["Claim: the moon is cheese.", "claim the MOON is cheese", ""], dim=256)
    np.testing.assert_allclose(x[0], x[1])      # case and punctuation are normalised away
    assert np.all(x[2] == 0)
    assert 1.0 <= np.linalg.norm(x[0]) <= 3 + 1e-5      # the sum of three unit-norm views


def test_logistic_regression_matches_the_optimality_condition():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 5)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    l2 = 0.1
    w, b = fit_logreg(x, y, 3, l2=l2, steps=2000, lr=0.5)
    g = (_softmax(x @ w + b) - np.eye(3)[y]) / len(y)
    assert np.abs(x.T @ g + l2 * w).max() < 1e-3      # the gradient of the objective vanishes
    assert np.abs(g.sum(axis=0)).max() < 1e-3


def test_train_save_load_route(tmp_path):
    router = train_router(write_router_data(tmp_path / "data"), holdout=0.25)
    assert router.roles == ["oracle", "surveyor"]
    assert router.info["heldout_accuracy"] >= 0.9 and router.info["examples"] == 80
    router.save(tmp_path / "adapters")
    meta = json.loads((tmp_path / "adapters" / "router.json").read_text())
    assert meta["heldout_accuracy"] == router.info["heldout_accuracy"]
    with zipfile.ZipFile(tmp_path / "adapters" / ROUTER_NPZ) as z:
        assert sorted(z.namelist()) == ["b.npy", "w.npy"]      # plain arrays, no pickle
    back = load_router(tmp_path / "adapters")
    assert back.route("Claim: bees sleep. True or false?")[0] == "oracle"
    assert back.route("What does the literature say about naps?")[0] == "surveyor"
    assert back.route("What does the literature say about naps?", allowed=["oracle"])[0] == "oracle"
    assert load_router(tmp_path / "nothing") is None


def test_train_needs_two_roles(tmp_path):
    write_router_data(tmp_path)
    with pytest.raises(DataError, match="two roles"):
        train_router(tmp_path, ["oracle"])
    with pytest.raises(DataError, match="missing"):
        train_router(tmp_path, ["oracle", "dissident"])


def test_router_train_cli(tmp_path):
    from iceburg_mlx.cli.main import app
    from typer.testing import CliRunner

    write_router_data(tmp_path / "data")
    r = CliRunner().invoke(app, ["router", "train", "--data-dir", str(tmp_path / "data"),
                                 "--adapters-dir", str(tmp_path / "ad")])
    assert r.exit_code == 0, r.output
    assert "held-out accuracy" in r.output and (tmp_path / "ad" / "router.npz").is_file()
