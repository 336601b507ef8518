"""MinHash signatures for a batch of texts, vectorised with NumPy.

Text is normalised byte-wise (ASCII lower-cased; every byte that is not a letter, a digit or
part of a multi-byte UTF-8 character is a separator), so case, punctuation and spacing changes
vanish. Words are hashed with a polynomial prefix hash over the whole batch at once (mod 2^64,
odd base, so a word's hash is (S[end] - S[start]) * base^-start); shingles are k consecutive
words (or k normalised characters) combined with per-position multipliers. Signatures use
datasketch's ``affine32`` scheme bit for bit: the 32-bit shingle hash is pre-mixed with the
MurmurHash3 finaliser, then ``a_i * h + b_i mod 2^32`` and a minimum per document
(``np.minimum.reduceat``). So `signatures(...)[j]` equals
``MinHash(num_perm, seed, scheme="affine32", hashfunc=identity).update_batch(shingle_hashes)``
(a test checks it), and LeanMinHash objects built from it work with MinHashLSH.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SCHEME = "affine32"
BASE = np.uint64(0x100000001B3)  # odd, so invertible mod 2^64
BASE_INV = np.uint64(pow(int(BASE), -1, 1 << 64))
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5], dtype=np.uint64)
MAX32 = np.uint32(0xFFFFFFFF)

# byte -> normalised byte: a-z/0-9/UTF-8 continuation and lead bytes kept (A-Z lower-cased), rest 0.
_TABLE = np.zeros(256, dtype=np.uint8)
for _b in range(256):
    _c = chr(_b)
    if _b >= 0x80 or _c.isdigit() and _b < 0x80 or "a" <= _c <= "z":
        _TABLE[_b] = _b
    elif "A" <= _c <= "Z":
        _TABLE[_b] = _b + 32


@dataclass(frozen=True)
class ShingleConfig:
    """How texts become sets: `k` consecutive words (unit='word') or characters (unit='char')."""

    k: int = 3
    unit: str = "word"
    num_perm: int = 128
    seed: int = 1


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) affine32 permutation parameters datasketch draws for (num_perm, seed)."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations
    return np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)


def fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


_POW: list[np.ndarray] = [np.ones(1, np.uint64), np.ones(1, np.uint64)]


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE^i and BASE^-i mod 2^64 for i < n (cached, grown by doubling)."""
    if len(_POW[0]) < n:
        m = max(n, 2 * len(_POW[0]), 1 << 16)
        with np.errstate(over="ignore"):
            for i, base in enumerate((BASE, BASE_INV)):
                steps = np.full(m, base, dtype=np.uint64)
                steps[0] = 1
                _POW[i] = np.cumprod(steps, dtype=np.uint64)
    return _POW[0][:n], _POW[1][:n]


def _encode(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised bytes of all texts joined by a separator, and each text's byte start."""
    parts = [t.encode("utf-8", "surrogatepass") for t in texts]
    lens = np.fromiter((len(p) + 1 for p in parts), dtype=np.int64, count=len(parts))
    starts = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(lens, out=starts[1:])
    blob = np.frombuffer(b"\0".join(parts) + b"\0", dtype=np.uint8)
    return _TABLE[blob], starts


def _words(norm: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of every word, index of its text)."""
    is_word = norm != 0
    edges = np.diff(np.concatenate([[False], is_word, [False]]).astype(np.int8))
    w_start = np.flatnonzero(edges == 1)
    w_end = np.flatnonzero(edges == -1)
    pw, pinv = _powers(len(norm) + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(norm) + 1, dtype=np.uint64)
        np.cumsum(norm.astype(np.uint64) * pw[: len(norm)], out=prefix[1:])
        h = (prefix[w_end] - prefix[w_start]) * pinv[w_start]
    doc = np.searchsorted(starts, w_start, side="right") - 1
    return fmix64(h), doc


def _chars(norm: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised characters with separator runs collapsed to one space, and their text index."""
    sep = norm == 0
    keep = ~(sep & np.concatenate([[True], sep[:-1]]))
    idx = np.flatnonzero(keep)
    vals = np.where(sep[idx], np.uint8(32), norm[idx]).astype(np.uint64)
    doc = np.searchsorted(starts, idx, side="right") - 1
    # a separator that ends a text belongs to the gap between texts: drop it
    last = np.concatenate([doc[1:] != doc[:-1], [True]])
    drop = last & sep[idx]
    return fmix64(vals[~drop] + np.uint64(0x51)), doc[~drop]


def _kgrams(tokens: np.ndarray, doc: np.ndarray, k: int, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of k consecutive tokens within a text; a text shorter than k gives one shingle."""
    n = len(tokens)
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            shifted = np.zeros(n, dtype=np.uint64)
            same = np.zeros(n, dtype=bool)
            if j < n:
                shifted[: n - j] = tokens[j:]
                same[: n - j] = doc[j:] == doc[: n - j]
            h += np.where(same, shifted, np.uint64(0)) * _MIX[j % len(_MIX)] * np.uint64(2 * j + 1)
    counts = np.bincount(doc, minlength=n_docs)
    first = np.zeros(n_docs, dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    pos = np.arange(n) - first[doc]
    full = pos + k <= counts[doc]
    short = (counts[doc] < k) & (pos == 0)
    valid = full | short
    return fmix64(h[valid]), doc[valid]


def shingle_hashes(texts: Sequence[str], cfg: ShingleConfig = ShingleConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(32-bit hash of every shingle, index of its text), texts in order."""
    if not texts:
        return np.zeros(0, np.uint32), np.zeros(0, np.int64)
    norm, starts = _encode(texts)
    tokens, doc = _words(norm, starts) if cfg.unit == "word" else _chars(norm, starts)
    h, d = _kgrams(tokens, doc, max(1, cfg.k), len(texts))
    return (h & np.uint64(0xFFFFFFFF)).astype(np.uint32), d


def signatures_from_hashes(h: np.ndarray, doc: np.ndarray, n_docs: int, num_perm: int, seed: int) -> np.ndarray:
    """(n_docs, num_perm) uint32 MinHash values; a text with no shingles gets all-max (empty)."""
    a, b = permutations(num_perm, seed)
    out = np.full((n_docs, num_perm), MAX32, dtype=np.uint32)
    if len(h) == 0:
        return out
    with np.errstate(over="ignore"):
        phv = fmix32(h)[:, None] * a[None, :] + b[None, :]
    present = np.flatnonzero(np.bincount(doc, minlength=n_docs))
    first = np.searchsorted(doc, present)
    out[present] = np.minimum.reduceat(phv, first, axis=0)
    return out


def signatures(texts: Sequence[str], cfg: ShingleConfig = ShingleConfig(), chunk: int = 1 << 15) -> np.ndarray:
    """MinHash signatures of `texts`, (len(texts), cfg.num_perm) uint32, computed in chunks."""
    h, doc = shingle_hashes(texts, cfg)
    out = np.empty((len(texts), cfg.num_perm), dtype=np.uint32)
    if not len(texts):
        return out
    # bound the (shingles x num_perm) temporary: split at document boundaries
    bounds = np.searchsorted(doc, np.arange(0, len(texts) + 1))
    lo = 0
    while lo < len(texts):
        hi = int(np.searchsorted(bounds, bounds[lo] + chunk, side="right")) - 1
        hi = min(max(hi, lo + 1), len(texts))
        s, e = bounds[lo], bounds[hi]
        out[lo:hi] = signatures_from_hashes(h[s:e], doc[s:e] - lo, hi - lo, cfg.num_perm, cfg.seed)
        lo = hi
    return out


def jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float | np.ndarray:
    """Estimated Jaccard similarity of signatures (rows broadcast)."""
    return np.count_nonzero(sig_a == sig_b, axis=-1) / sig_a.shape[-1]
