"""Several LoRA adapters over one base model, chosen per batch row.

`attach_multi_lora(model, [(name, dir), ...])` wraps every linear that any adapter targets in a
`MultiLoRALinear`: the base weights stay shared and untouched, and each adapter keeps its own
low-rank matrices. Within a layer they sit side by side as row blocks of `lora_a_t` (R, in; the
transposed lora_a) and `lora_b` (R, out), R = the sum of the ranks of the adapters that target the
layer, so for a batch

    y = base(x) + ((x @ lora_a_t.T) * mask[row]) @ lora_b

where `mask[row]` (1, R) holds the row's adapter scale on that adapter's block and zeros on the
others. Slot 0 is the bare base (an all-zero mask; a batch with only base rows skips the adapter
matmuls). Two small matmuls per layer serve every adapter at once, however rows are mixed; when
every row uses the same adapter, only its block is multiplied.

Which slot each row uses is set on the returned `AdapterSelector` before every forward;
`BatchGenerator(set_adapters=selector.set)` does that. Adapters are read from mlx-lm's layout
(`adapters.safetensors` + `adapter_config.json`); LoRA only (DoRA rescales the whole base row,
which cannot be shared).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx import nn
from mlx.utils import tree_unflatten

from iceburg_mlx.errors import AdapterError
from iceburg_mlx.adapters.layers import dims
from iceburg_mlx.adapters.files import WEIGHTS_FILE, read_adapter_config


class AdapterSelector:
    """The adapter slot of each row of the next forward, shared by a model's MultiLoRALinear layers."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)          # slot k (k >= 1) is names[k - 1]; slot 0 is the base
        self.rows: mx.array | None = None
        self.single: int | None = None
        self._masks: dict[int, mx.array] = {}

    @property
    def n_slots(self) -> int:
        return len(self.names) + 1

    def set(self, slots: Sequence[int] | None) -> None:
        """Slots of the rows of the next forward; None or all zeros: base only."""
        if slots is not None and any(not 0 <= s < self.n_slots for s in slots):
            raise AdapterError(f"adapter slot out of range 0..{self.n_slots - 1}: {list(slots)}")
        self.rows = mx.array(list(slots), dtype=mx.int32) if slots and any(slots) else None
        # every row on the same adapter (one request, or one role): its own block alone does
        self.single = slots[0] if self.rows is not None and len(set(slots)) == 1 else None
        self._masks.clear()

    def mask(self, table: mx.array) -> mx.array:
        """(B, 1, R): each row's line of `table` (n_slots, R), computed once per forward and table."""
        m = self._masks.get(id(table))
        if m is None:
            m = self._masks[id(table)] = table[self.rows][:, None, :]
        return m


class MultiLoRALinear(nn.Module):
    """A shared base linear plus every adapter's (lora_a, lora_b) block; see the module docstring."""

    def __init__(self, linear: nn.Module, selector: AdapterSelector, lora_a_t: mx.array, lora_b: mx.array,
                 table: mx.array, blocks: dict[int, tuple[int, int, float]]):
        super().__init__()
        self.linear = linear
        self.selector = selector
        self.lora_a_t, self.lora_b, self.table = lora_a_t, lora_b, table
        object.__setattr__(self, "_blocks", blocks)   # slot -> (start, end, scale) in the rank axis

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        if self.selector.rows is None:
            return y
        if self.selector.single is not None:
            block = self._blocks.get(self.selector.single)
            if block is None:          # that adapter does not touch this layer
                return y
            start, end, scale = block
            z, b = (x @ self.lora_a_t[start:end].T) * scale, self.lora_b[start:end]
        else:
            m = self.selector.mask(self.table)
            z, b = (x @ self.lora_a_t.T) * (m[:, 0, :] if x.ndim == 2 else m), self.lora_b
        if z.dtype != y.dtype:
            z = z.astype(y.dtype)
        return y + z @ b


@dataclass(frozen=True)
class AdapterSpec:
    name: str      # what requests call it (e.g. a role)
    path: Path     # adapter directory


def _read(spec: AdapterSpec) -> tuple[float, dict[str, dict[str, mx.array]]]:
    """(scale, module path -> {"lora_a", "lora_b"}) of one adapter directory."""
    config = read_adapter_config(spec.path)
    if config.get("fine_tune_type", "lora") != "lora":
        raise AdapterError(f"{spec.path}: {config.get('fine_tune_type')} adapters cannot be served side by "
                           "side (supported: lora); fuse it into the base instead")
    scale = float(config["lora_parameters"]["scale"])
    file = spec.path / WEIGHTS_FILE
    try:
        weights = mx.load(str(file))
    except (OSError, RuntimeError, ValueError) as e:
        raise AdapterError(f"{file}: cannot read adapter weights: {e}") from None
    modules: dict[str, dict[str, mx.array]] = {}
    for key, w in weights.items():
        path, _, leaf = key.rpartition(".")
        if leaf not in ("lora_a", "lora_b"):
            raise AdapterError(f"{file}: unexpected parameter {key} (supported: lora_a, lora_b)")
        modules.setdefault(path, {})[leaf] = w
    return scale, modules


def attach_multi_lora(model: nn.Module, adapters: Sequence[AdapterSpec]) -> AdapterSelector:
    """Wrap `model`'s targeted linears so that each batch row can use any one of `adapters`.

    Slot k (1-based) is `adapters[k - 1]`; slot 0 is the base. The model must have no adapters yet.
    Raises AdapterError naming the adapter that does not fit.
    """
    if any(hasattr(m, "lora_a") for _, m in model.named_modules()):
        raise AdapterError("model already has adapters; attach side-by-side adapters to a bare base")
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):
        raise AdapterError(f"adapter names must be unique: {names}")
    selector = AdapterSelector(names)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))}
    blocks: dict[str, list[tuple[int, float, mx.array, mx.array]]] = {}
    for slot, spec in enumerate(adapters, start=1):
        scale, modules = _read(spec)
        for path, leaves in modules.items():
            if path not in linears:
                raise AdapterError(f"{spec.name} ({spec.path}): {path} is not a linear layer of this model")
            if set(leaves) != {"lora_a", "lora_b"}:
                raise AdapterError(f"{spec.name} ({spec.path}): {path} needs both lora_a and lora_b")
            a, b = leaves["lora_a"], leaves["lora_b"]
            in_dims, out_dims = dims(linears[path])
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != in_dims or b.shape[1] != out_dims or a.shape[1] != b.shape[0]:
                raise AdapterError(f"{spec.name} ({spec.path}): {path} lora_a {tuple(a.shape)} / lora_b "
                                   f"{tuple(b.shape)} do not fit a {in_dims}->{out_dims} linear")
            blocks.setdefault(path, []).append((slot, scale, a, b))
    # layers with the same slots/ranks/scales share one mask table and one block map
    tables: dict[tuple, tuple[mx.array, dict[int, tuple[int, int, float]]]] = {}
    wrapped = []
    for path in list(blocks):
        items = blocks.pop(path)
        layout = tuple((slot, scale, a.shape[1]) for slot, scale, a, _ in items)
        if layout not in tables:
            rows = [[0.0] * sum(r for *_, r in layout) for _ in range(selector.n_slots)]
            block_of, off = {}, 0
            for slot, scale, r in layout:
                rows[slot][off:off + r] = [scale] * r
                block_of[slot], off = (off, off + r, scale), off + r
            tables[layout] = (mx.array(rows, dtype=mx.float32), block_of)
        lora_a_t = mx.contiguous(mx.concatenate([a for *_, a, _ in items], axis=1).T)   # (R, in): row blocks
        lora_b = mx.concatenate([b for *_, b in items], axis=0)
        mx.eval(lora_a_t, lora_b)   # one layer at a time: the files' arrays load lazily and go as we go
        del items
        wrapped.append((path, MultiLoRALinear(linears[path], selector, lora_a_t, lora_b, *tables[layout])))
    if wrapped:
        model.update_modules(tree_unflatten(wrapped))
    model.freeze()
    model.eval()
    mx.eval(model.parameters())
    return selector


def adapter_spec(name: str, path: str | os.PathLike) -> AdapterSpec:
    return AdapterSpec(name, Path(path))
