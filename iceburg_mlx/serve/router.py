"""The `iceburg-auto` router: which role should answer a prompt.

Features: signed feature hashing of word unigrams, word bigrams and character 4-grams (the
normalisation and hashes of `iceburg_mlx.data.minhash`), each view L2-normalised into `dim`
buckets. Model: multinomial logistic regression (softmax over roles, L2 penalty), fitted by
full-batch gradient descent with Nesterov momentum in NumPy. `train_router` holds out a
stratified `holdout` fraction to report accuracy, then refits on everything.

Saved as two files in the adapters directory (never pickle): `router.json` (roles, feature
settings, held-out accuracy, counts) and `router.npz` (W, b).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from iceburg_mlx.data import minhash as mh
from iceburg_mlx.errors import ConfigError, DataError

ROUTER_JSON, ROUTER_NPZ = "router.json", "router.npz"
VIEWS = (("word", 1), ("word", 2), ("char", 4))
FORMAT = 1


def features(texts: Sequence[str], dim: int = 16384) -> np.ndarray:
    """(len(texts), dim) float32: the sum of the L2-normalised hashed views (see module docstring)."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if not texts:
        return out
    for unit, k in VIEWS:
        view = np.zeros_like(out)
        h, doc = mh.shingle_hashes(list(texts), mh.ShingleConfig(k=k, unit=unit))
        bucket = (h % np.uint32(dim)).astype(np.int64)
        sign = np.where((h >> np.uint32(31)) & np.uint32(1), -1.0, 1.0).astype(np.float32)
        np.add.at(view, (doc, bucket), sign)
        out += view / np.maximum(np.linalg.norm(view, axis=1, keepdims=True), 1e-9)
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class _Sparse:
    """Rows of a mostly-zero matrix as (row, col, value) triples: x @ w and x.T @ g by bincount."""

    def __init__(self, x: np.ndarray):
        self.shape = x.shape
        self.rows, self.cols = np.nonzero(x)
        self.vals = x[self.rows, self.cols].astype(np.float64)

    def matmul(self, w: np.ndarray) -> np.ndarray:
        n = self.shape[0]
        return np.stack([np.bincount(self.rows, self.vals * w[self.cols, k], minlength=n)
                         for k in range(w.shape[1])], axis=1)

    def rmatmul(self, g: np.ndarray) -> np.ndarray:
        d = self.shape[1]
        return np.stack([np.bincount(self.cols, self.vals * g[self.rows, k], minlength=d)
                         for k in range(g.shape[1])], axis=1)


def fit_logreg(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-4, steps: int = 300,
               lr: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression: minimise mean cross-entropy + l2/2 ||W||^2. Returns (W, b)."""
    xs = _Sparse(x)
    n, d = x.shape
    w, b = np.zeros((d, n_classes)), np.zeros(n_classes)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    onehot = np.eye(n_classes)[y]
    for _ in range(steps):  # Nesterov: gradient at the look-ahead point
        lw, lb = w + 0.9 * vw, b + 0.9 * vb
        g = (_softmax(xs.matmul(lw) + lb) - onehot) / n
        vw = 0.9 * vw - lr * (xs.rmatmul(g) + l2 * lw)
        vb = 0.9 * vb - lr * g.sum(axis=0)
        w, b = w + vw, b + vb
    return w.astype(np.float32), b.astype(np.float32)


@dataclass
class Router:
    roles: list[str]
    w: np.ndarray              # (dim, n_roles)
    b: np.ndarray              # (n_roles,)
    dim: int
    info: dict = field(default_factory=dict)   # held-out accuracy, counts

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        return _softmax(features(texts, self.dim) @ self.w + self.b)

    def accuracy_among(self, roles: Sequence[str]) -> float | None:
        """Held-out accuracy when routing only among `roles`, over the held-out prompts of those
        roles (None when the router kept no held-out scores or none of them are of these roles)."""
        held = self.info.get("heldout")
        idx = [i for i, r in enumerate(self.roles) if r in roles]
        if not held or not idx:
            return None
        labels, scores = np.asarray(held["labels"]), np.asarray(held["scores"])
        keep = np.isin(labels, idx)
        if not keep.any():
            return None
        pred = np.asarray(idx)[np.argmax(scores[keep][:, idx], axis=1)]
        return float(np.mean(pred == labels[keep]))

    def route(self, text: str, allowed: Sequence[str] | None = None) -> tuple[str, float]:
        """(role, probability) for `text`, restricted to `allowed` roles when given."""
        p = self.probabilities([text])[0]
        idx = [i for i, r in enumerate(self.roles) if allowed is None or r in allowed]
        if not idx:
            raise ConfigError(f"the router knows none of the roles {list(allowed or [])} (it has {self.roles})")
        best = max(idx, key=lambda i: p[i])
        return self.roles[best], float(p[best])

    def save(self, directory: str | os.PathLike) -> Path:
        from iceburg_mlx.atomic import write_json, write_with

        d = Path(directory)
        write_with(d / ROUTER_NPZ, lambda t: np.savez(t, w=self.w, b=self.b), suffix=".npz")
        meta = {"format": FORMAT, "roles": self.roles, "dim": self.dim, "views": [list(v) for v in VIEWS],
                **self.info}
        return write_json(d / ROUTER_JSON, meta)


def load_router(directory: str | os.PathLike) -> Router | None:
    """The router saved in `directory`, or None if there is none."""
    d = Path(directory)
    if not (d / ROUTER_JSON).is_file():
        return None
    try:
        meta = json.loads((d / ROUTER_JSON).read_text(encoding="utf-8"))
        with np.load(d / ROUTER_NPZ, allow_pickle=False) as z:
            w, b = z["w"], z["b"]
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{d}: cannot read the router ({e})") from None
    roles, dim = meta.get("roles"), meta.get("dim")
    if meta.get("format") != FORMAT or not isinstance(roles, list) or w.shape != (dim, len(roles)) \
            or b.shape != (len(roles),):
        raise ConfigError(f"{d / ROUTER_JSON}: not a router this version can read; retrain it")
    info = {k: v for k, v in meta.items() if k not in ("format", "roles", "dim", "views")}
    return Router(list(roles), w, b, int(dim), info)


def user_turns(path: str | os.PathLike) -> list[str]:
    """The user messages of a chat JSONL file (every user turn of every record)."""
    from iceburg_mlx.data.formats import to_messages
    from iceburg_mlx.data.io import iter_jsonl

    out = []
    for _, rec in iter_jsonl(path):
        out += [m["content"] for m in to_messages(rec)
                if m.get("role") == "user" and isinstance(m.get("content"), str) and m["content"].strip()]
    return out


def _stratified_split(y: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = round(holdout * len(idx)) if len(idx) > 1 else 0
        test += idx[:k].tolist()
        train += idx[k:].tolist()
    return np.array(sorted(train)), np.array(sorted(test))


def train_router(data_dir: str | os.PathLike, roles: Sequence[str] | None = None, dim: int = 16384,
                 holdout: float = 0.2, seed: int = 0, l2: float = 1e-4, steps: int = 300) -> Router:
    """Fit a router on `data_dir/<role>/train.jsonl` user turns (roles: those given, else every such dir)."""
    root = Path(data_dir)
    if roles is None:
        roles = sorted(p.name for p in root.iterdir() if (p / "train.jsonl").is_file()) if root.is_dir() else []
    roles = list(roles)
    if len(roles) < 2:
        raise DataError(f"{root}: the router needs at least two roles with train.jsonl (found {roles})")
    texts, labels = [], []
    for i, role in enumerate(roles):
        file = root / role / "train.jsonl"
        if not file.is_file():
            raise DataError(f"{file}: missing (roles: {', '.join(roles)})")
        turns = user_turns(file)
        if not turns:
            raise DataError(f"{file}: no user turns")
        texts += turns
        labels += [i] * len(turns)
    x, y = features(texts, dim), np.array(labels)
    tr, te = _stratified_split(y, holdout, seed)
    accuracy, heldout = None, None
    if len(te):
        w, b = fit_logreg(x[tr], y[tr], len(roles), l2, steps)
        scores = x[te] @ w + b
        accuracy = float(np.mean(np.argmax(scores, axis=1) == y[te]))
        # each held-out prompt's label and scores: accuracy among any subset of roles (a server
        # that serves fewer roles than the router knows) is computed from these
        heldout = {"labels": y[te].tolist(), "scores": np.round(scores, 4).tolist()}
    w, b = fit_logreg(x, y, len(roles), l2, steps)
    info = {"heldout_accuracy": accuracy, "heldout": heldout, "heldout_examples": len(te), "examples": len(y),
            "per_role": {r: int(np.sum(y == i)) for i, r in enumerate(roles)}, "l2": l2, "steps": steps,
            "seed": seed, "data_dir": str(root)}
    return Router(roles, w, b, dim, info)
