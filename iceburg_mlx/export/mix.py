"""Export presets (`--quant`): which GGUF type each tensor gets, after llama.cpp's llama-quant.cpp.

A preset names a default type; the rules then adjust per tensor as llama.cpp's quantizer does for
the same file type, so our file and `llama-quantize`'s agree tensor for tensor:
- 1-D tensors (norms, biases, rope factors) stay F32;
- the output head (or the token embedding when it doubles as the head) gets Q6_K in every
  quantized preset but q8_0;
- q4_k_m gives Q6_K to attn_v and ffn_down in the layers `use_more_bits` picks (the first and
  last eighth, and every third in between), Q4_K elsewhere (the token embedding included);
- a row length that is not a whole number of blocks falls back as llama.cpp does
  (Q4_K -> Q5_0, Q6_K -> Q8_0, then F16).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, LlamaFileType
from gguf import GGMLQuantizationType as Q

from iceburg_mlx.errors import ExportError


@dataclass(frozen=True)
class Preset:
    name: str
    file_type: LlamaFileType
    default: Q
    more_bits: bool = False   # Q4_K_M-style Q6_K for part of attn_v / ffn_down
    quantized: bool = True    # output-head rule applies


PRESETS: dict[str, Preset] = {}


def _register(p: Preset) -> None:
    PRESETS[p.name] = p


_register(Preset("f32", LlamaFileType.ALL_F32, Q.F32, quantized=False))
_register(Preset("f16", LlamaFileType.MOSTLY_F16, Q.F16, quantized=False))
_register(Preset("bf16", LlamaFileType.MOSTLY_BF16, Q.BF16, quantized=False))
_register(Preset("q8_0", LlamaFileType.MOSTLY_Q8_0, Q.Q8_0))
_register(Preset("q4_0", LlamaFileType.MOSTLY_Q4_0, Q.Q4_0))
_register(Preset("q4_1", LlamaFileType.MOSTLY_Q4_1, Q.Q4_1))
_register(Preset("q4_k_m", LlamaFileType.MOSTLY_Q4_K_M, Q.Q4_K, more_bits=True))
_register(Preset("q6_k", LlamaFileType.MOSTLY_Q6_K, Q.Q6_K))

_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}
_LAYER = re.compile(r"^blk\.(\d+)\.")


def preset(name: str) -> Preset:
    key = name.lower().replace("-", "_")
    if key not in PRESETS:
        raise ExportError(f"unknown quant type '{name}' (valid: {', '.join(PRESETS)})")
    return PRESETS[key]


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers that get more bits in the *_M mixes."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def fit_type(qtype: Q, n_cols: int) -> Q:
    """`qtype`, or llama.cpp's fallback when a row is not a whole number of its blocks."""
    if n_cols % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    qtype = _FALLBACK.get(qtype, qtype)
    return qtype if n_cols % GGML_QUANT_SIZES[qtype][0] == 0 else Q.F16


def tensor_type(p: Preset, name: str, shape: tuple[int, ...], n_layers: int, has_output: bool) -> Q:
    """The GGUF type of tensor `name` (GGUF naming, NumPy shape: rows first) under preset `p`."""
    if len(shape) < 2 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return Q.F32
    qtype = p.default
    head = name == "output.weight" or (name == "token_embd.weight" and not has_output)
    if p.quantized and head:
        qtype = Q.Q8_0 if p.default == Q.Q8_0 else Q.Q6_K
    elif p.more_bits and (".attn_v." in name or ".ffn_down." in name):
        m = _LAYER.match(name)
        if m and use_more_bits(int(m.group(1)), n_layers):
            qtype = Q.Q6_K
    return fit_type(qtype, shape[-1])


def plan(p: Preset, shapes: dict[str, tuple[int, ...]], n_layers: int) -> dict[str, Q]:
    """{tensor name: GGUF type} for every tensor of a model."""
    has_output = "output.weight" in shapes
    return {n: tensor_type(p, n, s, n_layers, has_output) for n, s in shapes.items()}


__all__ = ["PRESETS", "Preset", "fit_type", "plan", "preset", "tensor_type", "use_more_bits"]
