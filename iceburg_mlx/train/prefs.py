"""Preference pairs for DPO: tokenised pairs, batches, a held-out split and the reference cache.

A pair is two `Example`s sharing one prompt: prompt + chosen and prompt + rejected, each masked on
the answer tokens by the SFT masking (`assistant_mask`). A `PrefBatch` stacks the B chosen rows
and then the B rejected rows into one padded `Batch` of 2B rows, so the policy runs one forward
per step. The reference log-probs (the same sums under the frozen reference) are computed once
per data file, stored under the toolkit's cache directory keyed by everything they depend on,
and attached to each batch: a training step then runs only the policy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iceburg_mlx.errors import DataError
from iceburg_mlx.train.batching import Batch, epoch_order, pad_rows
from iceburg_mlx.templates import assistant_mask, with_system
from iceburg_mlx.train.examples import BuildReport, Example

VALID_FRACTION = 0.1     # held-out share of a preference file when no data.valid is given
MIN_VALID = 8            # ... but at least this many pairs (when the file has 4x as many)
CACHE_VERSION = 1        # bump when the cached numbers change meaning


@dataclass
class PrefExample:
    chosen: Example
    rejected: Example
    index: int               # row of this pair in its file's reference cache
    source: str = ""         # file:line

    @property
    def width(self) -> int:
        return max(len(self.chosen.ids), len(self.rejected.ids))


@dataclass
class PrefBatch:
    rows: Batch                   # 2B rows: the B chosen answers, then the B rejected ones
    index: np.ndarray             # (B,) cache rows of the pairs
    ref: np.ndarray | None        # (2B,) reference log-prob sums in row order; None if reference-free

    @property
    def pairs(self) -> int:
        return len(self.index)

    @property
    def n_tokens(self) -> int:
        return self.rows.n_tokens

    @property
    def n_supervised(self) -> int:
        return self.rows.n_supervised

    @property
    def gather(self) -> int:
        return self.rows.gather

    def arrays(self) -> dict:
        """The objective's inputs: inputs/targets/mask (2B, L) and `ref` (2B,) when present."""
        import mlx.core as mx

        out = self.rows.arrays()
        if self.ref is not None:
            out["ref"] = mx.array(self.ref)
        return out

    def shard(self, rank: int, world: int) -> PrefBatch:
        """This rank's pairs of a global batch."""
        return self if world == 1 else take_pairs(self, range(rank, self.pairs, world))


# ----------------------------------------------------------------------------- reading pairs

def _answer(x, key: str) -> str:
    if not isinstance(x, str):
        raise DataError(f"'{key}' must be a string or assistant messages, got {type(x).__name__}")
    if not x.strip():
        raise DataError(f"'{key}' is empty")
    return x


def build_pref_examples(tokenizer, path: str | Path, max_seq_len: int, overlong: str = "truncate",
                        system_prompt: str | None = None, skip: Collection[int] = ()
                        ) -> tuple[list[PrefExample], BuildReport]:
    """Read a preference JSONL file ({prompt|messages, chosen, rejected}) into tokenised pairs.

    A record without `rejected`, or with `rejected` empty or equal to `chosen`, is a DataError
    naming file:line. Over-long sides are truncated or the pair dropped (per `overlong`); a pair
    with a side left with no answer token is dropped. Both are counted in the report."""
    from iceburg_mlx.data.formats import preference_parts
    from iceburg_mlx.data.io import iter_jsonl

    if overlong not in ("truncate", "drop"):
        raise DataError(f"data.overlong must be 'truncate' or 'drop', got '{overlong}'")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    out: list[PrefExample] = []
    rep = BuildReport()
    for n, record in iter_jsonl(path):
        if n in skip:
            rep.skipped_invalid += 1
            continue
        where = f"{path}:{n}"
        try:
            prompt, chosen, rejected = preference_parts(record)
            chosen, rejected = _answer(chosen, "chosen"), _answer(rejected, "rejected")
            if chosen.strip() == rejected.strip():
                raise DataError("'chosen' and 'rejected' are identical")
            prompt = with_system(prompt, system_prompt)
            sides = [assistant_mask(tokenizer, prompt + [{"role": "assistant", "content": a}])
                     for a in (chosen, rejected)]
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        if any(len(ids) > max_seq_len + 1 for ids, _ in sides):
            if overlong == "drop":
                rep.dropped_overlong += 1
                continue
            sides = [(ids[: max_seq_len + 1], mask[: max_seq_len + 1]) for ids, mask in sides]
            rep.truncated += 1
        c, r = (Example(ids, mask, where) for ids, mask in sides)
        if c.n_supervised == 0 or r.n_supervised == 0:
            rep.dropped_unsupervised += 1
            continue
        out.append(PrefExample(c, r, len(out), where))
        rep.tokens += len(c.ids) + len(r.ids) - 2
        rep.supervised_tokens += c.n_supervised + r.n_supervised
    rep.examples = len(out)
    if not out:
        raise rep.nothing_usable(path, "preference pairs", max_seq_len)
    return out, rep


def split_pairs(examples: Sequence[PrefExample], seed: int) -> tuple[list[PrefExample], list[PrefExample]]:
    """(train, held-out): a deterministic VALID_FRACTION (at least MIN_VALID when there are 4x as
    many pairs) chosen by a seeded permutation; both keep file order."""
    n = len(examples)
    k = max(int(np.ceil(VALID_FRACTION * n)), min(MIN_VALID, n // 4))
    if n < 2 or k == 0:
        return list(examples), []
    held = set(np.random.default_rng([seed, 7]).permutation(n)[:k].tolist())
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])


# ----------------------------------------------------------------------------- batches

def make_batch(pairs: Sequence[PrefExample], pad_id: int = 0, ref: np.ndarray | None = None) -> PrefBatch:
    """Chosen rows then rejected rows, padded to one width; `ref` (N, 2) is the file's cache."""
    rows = pad_rows([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    index = np.array([p.index for p in pairs], np.int64)
    r = None if ref is None else np.concatenate([ref[index, 0], ref[index, 1]]).astype(np.float32)
    return PrefBatch(rows, index, r)


def epoch_pref_batches(examples: Sequence[PrefExample], batch_size: int, seed: int, epoch: int,
                       pad_id: int = 0, ref: np.ndarray | None = None) -> list[PrefBatch]:
    """All batches of one epoch: shuffled, length-sorted within windows of 32 batches (less
    padding), the batches themselves shuffled. A pure function of its arguments."""
    order = epoch_order(len(examples), seed, epoch)
    window = batch_size * 32
    chunks = []
    for start in range(0, len(order), window):
        part = sorted(order[start:start + window], key=lambda i: examples[i].width)
        chunks += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    np.random.default_rng([seed, epoch, 3]).shuffle(chunks)
    return [make_batch([examples[i] for i in c], pad_id, ref) for c in chunks]


def iterate_pref(examples: Sequence[PrefExample], batch_size: int, seed: int, pad_id: int = 0,
                 ref: np.ndarray | None = None, start_epoch: int = 0,
                 start_index: int = 0) -> Iterator[tuple[int, int, PrefBatch]]:
    """Endless (epoch, index in epoch, batch), resumable like `batching.iterate`."""
    epoch = start_epoch
    while True:
        batches = epoch_pref_batches(examples, batch_size, seed, epoch, pad_id, ref)
        for j in range(start_index if epoch == start_epoch else 0, len(batches)):
            yield epoch, j, batches[j]
        epoch += 1


def take_pairs(b: PrefBatch, pairs: Sequence[int]) -> PrefBatch:
    """The sub-batch of the given pairs (a data-parallel rank's share)."""
    idx = np.asarray(pairs, np.int64)
    rows = np.concatenate([idx, idx + b.pairs])
    r = b.rows
    sub = Batch(r.inputs[rows], r.targets[rows], r.mask[rows], None, r.lengths[rows])
    return PrefBatch(sub, b.index[idx], None if b.ref is None else b.ref[rows])


# ----------------------------------------------------------------------------- reference cache

def base_identity(path: str | Path | None, spec: str) -> str:
    """Cheap identity of the base weights: path, size and mtime of each weight file."""
    if path is None:
        return f"spec:{spec}"
    p = Path(path)
    files = [p] if p.is_file() else sorted(p.glob("*.safetensors")) + sorted(p.glob("*.gguf"))
    parts = []
    for f in files:
        st = f.stat()
        parts.append(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return "\n".join(parts) or f"dir:{p.resolve()}"


def cache_key(**fields) -> str:
    """sha256 over the sorted fields (data sha, base identity, init adapter sha, max_seq_len, ...)."""
    text = json.dumps({"version": CACHE_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def default_cache_dir() -> Path:
    from iceburg_mlx.paths import home_dir

    return home_dir() / "reference-logprobs"


def compute_reference(model, examples: Sequence[PrefExample], batch_size: int, pad_id: int = 0,
                      on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(N, 2) summed answer log-probs [chosen, rejected] of each pair, in the order given, under
    `model` as it is now (callers disable or set the adapters first). Forward only, batched in
    length order. For a whole file (as the cache holds) row i is the pair with index i."""
    import mlx.core as mx

    from iceburg_mlx.train.forward import hidden_states
    from iceburg_mlx.train.losses import lm_head, sequence_logprobs

    out = np.zeros((len(examples), 2), np.float64)
    order = sorted(range(len(examples)), key=lambda i: examples[i].width)
    head = lm_head(model)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        chunk = [examples[i] for i in rows]
        b = make_batch(chunk, pad_id)
        arrays = b.arrays()
        h = hidden_states(model, arrays["inputs"])
        logps, _ = sequence_logprobs(head, h, arrays["targets"], arrays["mask"], b.gather, for_grad=False)
        logps = np.array(logps.astype(mx.float32), np.float64)
        out[rows, 0], out[rows, 1] = logps[: len(chunk)], logps[len(chunk):]
        if on_progress:
            on_progress(min(start + batch_size, len(order)), len(order))
    return out


def cached_reference(model, examples: Sequence[PrefExample], key: str, batch_size: int, pad_id: int = 0,
                     cache_dir: Path | None = None,
                     on_progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, Path, bool]:
    """(the (N, 2) reference log-probs, cache file, whether it was a hit). Computed with
    `compute_reference` on a miss and written atomically."""
    import mlx.core as mx

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    file = cache_dir / f"{key}.safetensors"
    if file.is_file():
        try:
            arr = np.array(mx.load(str(file))["logps"], np.float64)
            if arr.shape == (len(examples), 2):
                return arr, file, True
        except (OSError, RuntimeError, ValueError, KeyError):
            pass  # unreadable: recompute and replace it
    arr = compute_reference(model, examples, batch_size, pad_id, on_progress)
    from iceburg_mlx.atomic import write_with

    write_with(file, lambda t: mx.save_safetensors(str(t), {"logps": mx.array(arr.astype(np.float32))},
                                                   metadata={"pairs": str(len(examples)),
                                                             "version": str(CACHE_VERSION)}),
               suffix=".safetensors")
    return arr.astype(np.float32).astype(np.float64), file, False
