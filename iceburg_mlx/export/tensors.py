"""A model's tensors under GGUF names, each able to give its dense values or its lossless GGUF bytes.

The in-memory layout is Hugging Face's; llama's q/k rows are permuted back to llama.cpp's rotary
order here (`permute_rows(..., inverse=False)`), on dense rows and on packed quantized rows alike.
A layer MLX holds as affine group-32 quantized data maps to a legacy GGUF type without
requantizing: 4-bit -> Q4_1 (MLX scale, bias = GGUF d, m), 4-bit with bias == -8 * scale -> Q4_0,
8-bit with bias == -128 * scale -> Q8_0 (how `mx.load` reads those GGUF types).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q

from iceburg_mlx.errors import ExportError
from iceburg_mlx.models.gguf_loader import (
    HF_TO_GGUF_BLOCK,
    HF_TO_GGUF_GLOBAL,
    permute_rows,
)

# mlx-lm model_type -> GGUF general.architecture (Mistral checkpoints are llama in GGUF)
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
PERMUTED_QK = {"llama"}


def gguf_arch(config: dict) -> str:
    mt = config.get("model_type")
    if mt not in GGUF_ARCH:
        raise ExportError(f"model_type '{mt}' has no GGUF mapping (supported: {', '.join(sorted(GGUF_ARCH))})")
    return GGUF_ARCH[mt]


def gguf_name(hf: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`."""
    base, _, kind = hf.rpartition(".")
    if base in HF_TO_GGUF_GLOBAL:
        return f"{HF_TO_GGUF_GLOBAL[base]}.{kind}"
    parts = base.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in HF_TO_GGUF_BLOCK:
        return f"blk.{parts[2]}.{HF_TO_GGUF_BLOCK[parts[3]]}.{kind}"
    raise ExportError(f"tensor '{hf}' has no GGUF name")


@dataclass
class Tensor:
    """One GGUF tensor's source: a dense array, or MLX affine-quantized (weight, scales, biases)."""

    name: str                      # GGUF name
    weight: Any                    # mx.array
    scales: Any = None
    biases: Any = None
    bits: int = 0
    group_size: int = 0
    n_head: int = 0                # > 0: permute rows for llama.cpp's rotary layout

    @property
    def quantized(self) -> bool:
        return self.scales is not None

    @property
    def shape(self) -> tuple[int, ...]:
        if self.quantized:
            return (int(self.weight.shape[0]), int(self.weight.shape[1]) * 32 // self.bits)
        return tuple(int(d) for d in self.weight.shape)

    def _rows(self, a: np.ndarray) -> np.ndarray:
        return permute_rows(a, self.n_head, inverse=False) if self.n_head else a

    def dense(self) -> np.ndarray:
        """float32 values in GGUF row order (quantized data dequantized with f32 scales: exact)."""
        import mlx.core as mx

        if self.quantized:
            w = mx.dequantize(self.weight, self.scales.astype(mx.float32), self.biases.astype(mx.float32),
                              group_size=self.group_size, bits=self.bits)
        else:
            w = self.weight.astype(mx.float32)
        return self._rows(np.array(w, copy=True))

    def lossless_type(self) -> Q | None:
        """The legacy GGUF type this quantized tensor equals exactly, if any."""
        if not self.quantized or self.group_size != 32 or self.bits not in (4, 8):
            return None
        s = np.array(self.scales.astype(_f32()))
        b = np.array(self.biases.astype(_f32()))
        if not (_exact_f16(s) and _exact_f16(b)):
            return None
        if self.bits == 8:
            return Q.Q8_0 if np.array_equal(b, -128.0 * s) else None
        return Q.Q4_0 if np.array_equal(b, -8.0 * s) else Q.Q4_1

    def lossless_bytes(self, qtype: Q) -> np.ndarray:
        """GGUF blocks of `qtype` (from `lossless_type`) built from the MLX data, no requantizing."""
        packed = self._rows(np.array(self.weight).view(np.uint8))
        s = self._rows(np.array(self.scales)).astype(np.float16).reshape(-1, 1).view(np.uint8)
        b = self._rows(np.array(self.biases)).astype(np.float16).reshape(-1, 1).view(np.uint8)
        rows = packed.shape[0]
        if qtype == Q.Q8_0:
            q = (packed.reshape(-1, 32).astype(np.int16) - 128).astype(np.int8).view(np.uint8)
            blocks = np.concatenate([s, q], axis=1)
        else:  # MLX packs element 2i in the low nibble of byte i; GGUF pairs element i with i + 16
            nib = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1, 32)
            qs = nib[:, :16] | (nib[:, 16:] << 4)
            blocks = np.concatenate([s, qs] if qtype == Q.Q4_0 else [s, b, qs], axis=1)
        return blocks.reshape(rows, -1)


def _f32():
    import mlx.core as mx

    return mx.float32


def _exact_f16(a: np.ndarray) -> bool:
    return bool(np.array_equal(a.astype(np.float16).astype(np.float32), a))


def collect(model, config: dict) -> list[Tensor]:
    """The model's tensors in GGUF naming and order, q/k marked for permutation where needed."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    arch = gguf_arch(config)
    n_heads = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_heads)
    modules = dict(model.named_modules())
    out = []
    for name, arr in tree_flatten(model.parameters()):
        base, _, leaf = name.rpartition(".")
        mod = modules.get(base)
        if leaf in ("scales", "biases") and hasattr(mod, "bits"):
            continue
        if any(k in name for k in ("lora_a", "lora_b")) or leaf == "m":
            raise ExportError(f"'{name}': adapters must be fused before export")
        t = Tensor(gguf_name(name), arr)
        if leaf == "weight" and isinstance(mod, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            if getattr(mod, "mode", "affine") != "affine":
                raise ExportError(f"'{name}': quantization mode {mod.mode} cannot be exported")
            t.scales, t.biases = mod.scales, mod.biases
            t.bits, t.group_size = int(mod.bits), int(mod.group_size)
        if arch in PERMUTED_QK and (".attn_q." in t.name or ".attn_k." in t.name):
            t.n_head = n_heads if ".attn_q." in t.name else n_kv
        out.append(t)
    order = {"token_embd": 0, "blk": 1, "output_norm": 2, "output": 3}

    def key(t: Tensor):
        head = t.name.split(".")[0]
        layer = int(t.name.split(".")[1]) if head == "blk" else -1
        return (order.get(head, 4), layer)

    return sorted(out, key=key)


__all__ = ["GGUF_ARCH", "Tensor", "collect", "gguf_arch", "gguf_name"]
