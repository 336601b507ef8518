"""Batches from examples: packed rows or length-bucketed padded rows, deterministic per epoch.

A `Batch` carries inputs/targets/mask (B, L) as NumPy arrays and, for packed rows, `segments`:
the conversation index of each position (-1 for padding). The order of batches is a pure
function of (examples, seed, epoch), so a resumed run replays exactly the same data.

Packing puts several conversations in one row (first-fit on a shuffled order). Attention is kept
inside each conversation by a block-diagonal causal mask (`packed_mask`). Positions keep counting
across a row: with rotary embeddings attention depends only on position differences within a
conversation, so that is exactly equivalent to restarting them (tested against unpacked batches).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from iceburg_mlx.train.examples import Example

PAD_MULTIPLE = 32  # row lengths are rounded up to this, so compiled steps see few shapes


@dataclass
class Batch:
    inputs: np.ndarray            # (B, L) int32
    targets: np.ndarray           # (B, L) int32
    mask: np.ndarray              # (B, L) float32: 1 on supervised targets
    segments: np.ndarray | None   # (B, L) int32 for packed rows, else None
    lengths: np.ndarray           # (B,) non-pad positions per row

    @property
    def n_supervised(self) -> int:
        return int(self.mask.sum())

    @property
    def n_tokens(self) -> int:
        """Non-pad positions (what throughput counts)."""
        return int(self.lengths.sum())

    @property
    def gather(self) -> int:
        """The static number of positions the objective gathers for the lm_head (a few buckets, so
        compiled steps see few shapes)."""
        from iceburg_mlx.train.losses import bucket

        return bucket(max(1, self.n_supervised))

    def arrays(self) -> dict:
        """The objective's inputs: inputs/targets/mask (B, L) and, for packed rows, `attn`."""
        import mlx.core as mx

        out = {"inputs": mx.array(self.inputs), "targets": mx.array(self.targets), "mask": mx.array(self.mask)}
        if self.segments is not None:
            out["attn"] = packed_mask(self.segments)
        return out

    def shard(self, rank: int, world: int) -> Batch:
        """This rank's rows of a global batch (every world-th row from `rank`)."""
        return self if world == 1 else take_rows(self, range(rank, len(self.inputs), world))


def _round_up(n: int, m: int = PAD_MULTIPLE) -> int:
    return -(-n // m) * m


def pad_rows(rows: Sequence[Example], pad_id: int = 0) -> Batch:
    """Right-padded rows of single conversations."""
    width = _round_up(max(len(r.ids) - 1 for r in rows))
    b = len(rows)
    inputs = np.full((b, width), pad_id, np.int32)
    targets = np.full((b, width), pad_id, np.int32)
    mask = np.zeros((b, width), np.float32)
    lengths = np.zeros(b, np.int64)
    for i, r in enumerate(rows):
        n = len(r.ids) - 1
        inputs[i, :n] = r.ids[:-1]
        targets[i, :n] = r.ids[1:]
        mask[i, :n] = r.mask[1:]
        lengths[i] = n
    return Batch(inputs, targets, mask, None, lengths)


def pack_rows(groups: Sequence[Sequence[Example]], width: int, pad_id: int = 0) -> Batch:
    """Rows each holding several conversations back to back; `segments` marks which is which."""
    b = len(groups)
    inputs = np.full((b, width), pad_id, np.int32)
    targets = np.full((b, width), pad_id, np.int32)
    mask = np.zeros((b, width), np.float32)
    segments = np.full((b, width), -1, np.int32)
    for i, group in enumerate(groups):
        pos = 0
        for s, r in enumerate(group):
            n = len(r.ids) - 1
            inputs[i, pos:pos + n] = r.ids[:-1]
            targets[i, pos:pos + n] = r.ids[1:]
            mask[i, pos:pos + n] = r.mask[1:]
            segments[i, pos:pos + n] = s
            pos += n
    return Batch(inputs, targets, mask, segments, (segments >= 0).sum(axis=1))


def packed_mask(segments):
    """(B, 1, L, L) boolean attention mask: causal and within one conversation.

    Padding positions may attend to themselves only (so no softmax row is empty)."""
    import mlx.core as mx

    seg = mx.array(segments)
    L = seg.shape[1]
    causal = mx.tril(mx.ones((L, L), dtype=mx.bool_))
    same = seg[:, :, None] == seg[:, None, :]
    eye = mx.eye(L, dtype=mx.bool_)
    return ((same & causal[None]) | eye[None])[:, None]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def epoch_batches(examples: Sequence[Example], batch_size: int, seed: int, epoch: int,
                  packing: bool, max_seq_len: int, pad_id: int = 0) -> list[Batch]:
    """All batches of one epoch, in training order."""
    order = epoch_order(len(examples), seed, epoch)
    if packing:
        return _packed(examples, order, batch_size, max_seq_len, pad_id, seed, epoch)
    return _bucketed(examples, order, batch_size, pad_id, seed, epoch)


def _bucketed(examples, order, batch_size, pad_id, seed, epoch) -> list[Batch]:
    # sort by length within windows of 32 batches, so rows of a batch have similar lengths,
    # then shuffle the batches themselves
    window = batch_size * 32
    chunks = []
    for start in range(0, len(order), window):
        part = sorted(order[start:start + window], key=lambda i: len(examples[i].ids))
        chunks += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    rng = np.random.default_rng([seed, epoch, 1])
    rng.shuffle(chunks)
    return [pad_rows([examples[i] for i in c], pad_id) for c in chunks]


def _packed(examples, order, batch_size, width, pad_id, seed, epoch) -> list[Batch]:
    rows: list[list[Example]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i].ids) - 1
        for r in range(max(0, len(rows) - 8), len(rows)):  # first fit among the last few open rows
            if room[r] >= n:
                rows[r].append(examples[i])
                room[r] -= n
                break
        else:
            rows.append([examples[i]])
            room.append(width - n)
    rng = np.random.default_rng([seed, epoch, 2])
    rng.shuffle(rows)
    return [pack_rows(rows[j:j + batch_size], width, pad_id) for j in range(0, len(rows), batch_size)]


def iterate(examples: Sequence[Example], batch_size: int, seed: int, packing: bool, max_seq_len: int,
            pad_id: int = 0, start_epoch: int = 0, start_index: int = 0) -> Iterator[tuple[int, int, Batch]]:
    """Endless (epoch, index in epoch, batch), resumable from (start_epoch, start_index)."""
    epoch = start_epoch
    while True:
        batches = epoch_batches(examples, batch_size, seed, epoch, packing, max_seq_len, pad_id)
        for j in range(start_index if epoch == start_epoch else 0, len(batches)):
            yield epoch, j, batches[j]
        epoch += 1


def batches_per_epoch(examples: Sequence[Example], batch_size: int, seed: int, packing: bool,
                      max_seq_len: int) -> int:
    return len(epoch_batches(examples, batch_size, seed, 0, packing, max_seq_len))


def take_rows(b: Batch, rows: Sequence[int]) -> Batch:
    """The sub-batch of the given rows (a data-parallel rank's share of a global batch)."""
    idx = np.asarray(rows, dtype=np.int64)
    seg = b.segments[idx] if b.segments is not None else None
    return Batch(b.inputs[idx], b.targets[idx], b.mask[idx], seg, b.lengths[idx])
