"""LoRA and DoRA adapter layers over `nn.Linear` / `nn.QuantizedLinear`, in mlx-lm's layout.

An adapter layer wraps the frozen base as `.linear` and adds `lora_a` (input_dims, r) and
`lora_b` (r, output_dims, zero at init) scaled by alpha / r; DoRA adds the magnitude `m`
(output_dims,). A quantized base stays quantized (QLoRA). Parameter names match mlx-lm 0.32.

Every adapter layer has `from_base()`, `fuse()` and a `disabled` flag; `adapters_disabled(model)`
turns the model back into its base for a DPO reference forward without a second copy of the
weights. The flag is read when a function is traced: compile the reference forward separately.
Files (save, load, config) are `adapters.files`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from iceburg_mlx.errors import AdapterError, ConfigError

ADAPTER_LEAVES = ("lora_a", "lora_b", "m")


def dims(linear: nn.Module) -> tuple[int, int]:
    out_dims, packed = linear.weight.shape
    if isinstance(linear, nn.QuantizedLinear):
        return packed * 32 // linear.bits, out_dims
    return packed, out_dims


def dense_weight(linear: nn.Module) -> mx.array:
    """The (output_dims, input_dims) weight of a Linear, dequantized for a QuantizedLinear."""
    if isinstance(linear, nn.QuantizedLinear):
        return mx.dequantize(linear.weight, linear.scales, linear.get("biases"),
                             group_size=linear.group_size, bits=linear.bits, mode=linear.mode)
    return linear.weight


def _rebuild(linear: nn.Module, weight: mx.array, dequantize: bool) -> nn.Module:
    """A plain Linear with `weight` and the base's bias, requantized like the base unless asked not to."""
    out_dims, in_dims = weight.shape
    fused = nn.Linear(in_dims, out_dims, bias="bias" in linear)
    fused.weight = weight
    if "bias" in linear:
        fused.bias = linear.bias
    if isinstance(linear, nn.QuantizedLinear) and not dequantize:
        return nn.QuantizedLinear.from_linear(fused, linear.group_size, linear.bits, mode=linear.mode)
    return fused


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * dropout(x) @ lora_a @ lora_b."""

    def __init__(self, linear: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if r < 1:
            raise ConfigError(f"lora.rank: must be >= 1, got {r}")
        in_dims, out_dims = dims(linear)
        self.linear = linear
        self.rank, self.alpha, self.p_dropout = int(r), float(alpha), float(dropout)
        self.scale = self.alpha / self.rank
        self.dropout = nn.Dropout(p=dropout)
        self.disabled = False
        bound = 1.0 / math.sqrt(in_dims)
        self.lora_a = mx.random.uniform(low=-bound, high=bound, shape=(in_dims, r))
        self.lora_b = mx.zeros((r, out_dims))

    @classmethod
    def from_base(cls, linear: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        if not isinstance(linear, (nn.Linear, nn.QuantizedLinear)):
            raise AdapterError(f"cannot put an adapter on a {type(linear).__name__}")
        return cls(linear, r=r, alpha=alpha, dropout=dropout)

    def delta(self) -> mx.array:
        """The (output_dims, input_dims) weight update scale * (lora_a @ lora_b).T."""
        return (self.scale * self.lora_b.T) @ self.lora_a.T

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        if self.disabled:
            return y
        z = (self.dropout(x) @ self.lora_a) @ self.lora_b
        return y + (self.scale * z).astype(y.dtype)

    def fuse(self, dequantize: bool = False) -> nn.Module:
        """The base with the update merged in (ignores `disabled`)."""
        w = dense_weight(self.linear)
        return _rebuild(self.linear, w + self.delta().astype(w.dtype), dequantize)


class DoRALinear(LoRALinear):
    """DoRA: y = m * (W + dW) x / ||W + dW||_row + bias, the norm treated as a constant in backward.

    The row norms are computed without forming W + dW: ||W_i||^2 (cached at wrap time) +
    2 s (W A)_i . B_i + s^2 B_i^T (A^T A) B_i, so a quantized base is never dequantized.
    Wrap after the base weights are loaded: `m` and the cached ||W_i||^2 are taken from them.
    """

    def __init__(self, linear: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__(linear, r=r, alpha=alpha, dropout=dropout)
        self._set_base_norm()

    def _set_base_norm(self) -> None:
        w = dense_weight(self.linear).astype(mx.float32)
        self._base_norm2 = mx.sum(w * w, axis=1)  # "_" keeps it out of parameters()
        self.m = mx.sqrt(self._base_norm2)

    def _adapted_norm(self) -> mx.array:
        a, b = self.lora_a, self.lora_b
        lin = self.linear
        if isinstance(lin, nn.QuantizedLinear):
            wa = mx.quantized_matmul(a.T.astype(lin.scales.dtype), lin.weight, lin.scales, lin.get("biases"),
                                     transpose=True, group_size=lin.group_size, bits=lin.bits,
                                     mode=lin.mode).T.astype(mx.float32)
        else:
            wa = lin.weight.astype(mx.float32) @ a  # (out, r)
        cross = mx.sum(wa * b.T, axis=1)
        quad = mx.sum((b.T @ (a.T @ a)) * b.T, axis=1)
        n2 = self._base_norm2 + 2.0 * self.scale * cross + (self.scale ** 2) * quad
        return mx.sqrt(mx.maximum(n2, 1e-12))

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        if self.disabled:
            return y
        has_bias = "bias" in self.linear
        if has_bias:
            y = y - self.linear.bias
        z = (self.dropout(x) @ self.lora_a) @ self.lora_b
        out = y + (self.scale * z).astype(y.dtype)
        factor = self.m / mx.stop_gradient(self._adapted_norm())
        out = factor.astype(out.dtype) * out
        return out + self.linear.bias if has_bias else out

    def fuse(self, dequantize: bool = False) -> nn.Module:
        w = dense_weight(self.linear)
        adapted = w.astype(mx.float32) + self.delta()
        norm = mx.sqrt(mx.sum(adapted * adapted, axis=1))
        weight = ((self.m / norm)[:, None] * adapted).astype(w.dtype)
        return _rebuild(self.linear, weight, dequantize)


def adapter_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """(path, layer) for every adapter layer in the model."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes its base (e.g. the DPO reference)."""
    layers = [m for _, m in adapter_layers(model)]
    before = [m.disabled for m in layers]
    for m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for m, was in zip(layers, before):
            m.disabled = was


def _cfg(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def blocks(model: nn.Module) -> list[nn.Module]:
    layers = getattr(model, "layers", None)
    if layers is None:
        raise AdapterError(f"{type(model).__name__} has no `layers` list of transformer blocks")
    return list(layers)


def _matches(path: str, targets: tuple[str, ...]) -> bool:
    return any(path == t or path.endswith("." + t) for t in targets)


def apply_lora(model: nn.Module, cfg: Any) -> int:
    """Freeze `model`, wrap the target linears of its last `cfg.layers` blocks, unfreeze the adapters.

    `cfg` is a LoraConfig or anything with rank, alpha, dropout, target_modules, layers (-1 = all)
    and dora; a target is a module name inside a block (`q_proj`) or a dotted path in it
    (`self_attn.q_proj`). Returns the number of layers wrapped.
    """
    rank, alpha = int(_cfg(cfg, "rank", 8)), float(_cfg(cfg, "alpha", 16.0))
    dropout = float(_cfg(cfg, "dropout", 0.0))
    targets = tuple(_cfg(cfg, "target_modules", ()) or ())
    n = _cfg(cfg, "layers", -1)
    n = -1 if n in ("all", None) else int(n)
    layer_cls = DoRALinear if _cfg(cfg, "dora", False) else LoRALinear
    all_blocks = blocks(model)
    if n == 0 or n < -1:
        raise ConfigError(f"lora.layers: must be >= 1, or -1/'all', got {n}")
    if not targets:
        raise ConfigError("lora.target_modules: must name at least one module")
    if adapter_layers(model):
        raise AdapterError("model already has adapters; load into it with load_adapters()")
    chosen = all_blocks if n == -1 else all_blocks[-min(n, len(all_blocks)):]
    model.freeze()
    count = 0
    for block in chosen:
        wrapped = []
        for path, module in block.named_modules():
            if _matches(path, targets) and isinstance(module, (nn.Linear, nn.QuantizedLinear)):
                layer = layer_cls.from_base(module, r=rank, alpha=alpha, dropout=dropout)
                layer.unfreeze(keys=list(ADAPTER_LEAVES), recurse=False, strict=False)
                wrapped.append((path, layer))
        if wrapped:
            block.update_modules(tree_unflatten(wrapped))
            count += len(wrapped)
    if count == 0:
        names = sorted({p for b in all_blocks[:1] for p, m in b.named_modules()
                        if isinstance(m, (nn.Linear, nn.QuantizedLinear))})
        raise ConfigError(f"lora.target_modules: none of {list(targets)} found in the blocks; "
                          f"linears there: {', '.join(names)}")
    return count


def fuse_model(model: nn.Module, dequantize: bool = False) -> int:
    """Replace every module that has `fuse` (our adapters or mlx-lm's) by its fused base; returns count."""
    fused = [(name, m.fuse(dequantize=dequantize)) for name, m in model.named_modules()
             if name and callable(getattr(m, "fuse", None))]
    if fused:
        model.update_modules(tree_unflatten(fused))
    return len(fused)


def adapter_weights(model: nn.Module) -> dict[str, mx.array]:
    """The adapter arrays by their full parameter path (mlx-lm's names)."""
    out = {}
    for name, layer in adapter_layers(model):
        for leaf in ADAPTER_LEAVES:
            if leaf in layer:
                out[f"{name}.{leaf}"] = layer[leaf]
    return out


def trainable_parameter_count(model: nn.Module) -> int:
    """Number of trainable scalars (the adapters after apply_lora)."""
    return sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
