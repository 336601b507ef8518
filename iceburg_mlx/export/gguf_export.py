"""Write a (fused) model as one GGUF file with the `gguf` package's GGUFWriter.

The writer is walked through its states explicitly: every tensor's info is declared up front
(type from the preset's plan, byte size from the type), then header, key-values and tensor infos
are written, then each tensor is encoded and streamed out one at a time, so peak memory is one
tensor. The file is written under a temporary name in the destination directory and renamed into
place only when complete; on any error the partial file is removed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_VERSION, GGUFWriter, RopeScalingType
from gguf import GGMLQuantizationType as Q
from gguf.quants import quant_shape_to_byte_shape

from iceburg_mlx.atomic import atomic_path
from iceburg_mlx.errors import ExportError
from iceburg_mlx.export import mix, quants
from iceburg_mlx.export.gguf_vocab import KV
from iceburg_mlx.hashing import sha256_file
from iceburg_mlx.export.tensors import Tensor, collect, gguf_arch

Progress = Callable[[str, int, int], None]  # (tensor name, index, total)


@dataclass
class GGUFResult:
    path: Path
    preset: str
    types: dict[str, str]                          # tensor -> GGUF type name
    lossless: list[str] = field(default_factory=list)  # tensors copied without requantizing
    sha256: str = ""
    n_bytes: int = 0
    seconds: float = 0.0


def _head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _rope(config: dict) -> tuple[list[tuple[str, object]], np.ndarray | None]:
    """Rope-scaling writer calls and the llama3 `rope_freqs` tensor; raises for kinds we cannot write."""
    s = config.get("rope_scaling")
    if not s:
        return [], None
    kind = s.get("rope_type") or s.get("type")
    if kind == "linear":
        return [("add_rope_scaling_type", RopeScalingType.LINEAR),
                ("add_rope_scaling_factor", float(s["factor"]))], None
    if kind == "llama3":
        from iceburg_mlx.models.gguf_loader import _llama3_factors

        freqs = _llama3_factors(_head_dim(config), float(config.get("rope_theta", 10000.0)), s)
        return [], freqs.astype(np.float32)
    raise ExportError(f"rope scaling '{kind}' cannot be written to GGUF (linear, llama3)")


def _hparams(w: GGUFWriter, config: dict, n_vocab: int) -> None:
    heads = int(config["num_attention_heads"])
    w.add_context_length(int(config.get("max_position_embeddings", 4096)))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_block_count(int(config["num_hidden_layers"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(heads)
    w.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    w.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    w.add_rope_dimension_count(_head_dim(config))
    w.add_vocab_size(n_vocab)
    if _head_dim(config) != int(config["hidden_size"]) // heads:
        w.add_key_length(_head_dim(config))
        w.add_value_length(_head_dim(config))


def _choose_types(p: mix.Preset, tensors: Sequence[Tensor], n_layers: int) -> tuple[dict[str, Q], set[str]]:
    """The preset's plan, with already-quantized tensors kept as they are where that is exact."""
    types = mix.plan(p, {t.name: t.shape for t in tensors}, n_layers)
    lossless = set()
    for t in tensors:
        lt = t.lossless_type()
        if lt is None:
            continue
        if lt == types[t.name] or (p.default == Q.Q4_1 and lt in (Q.Q4_1, Q.Q8_0)):
            types[t.name] = lt
            lossless.add(t.name)
    return types, lossless


def _encode(t: Tensor, qtype: Q, lossless: bool, importance: np.ndarray | None = None) -> np.ndarray:
    if lossless:
        return t.lossless_bytes(qtype)
    data = t.dense()
    if data.ndim < 2 and qtype != Q.F32:
        raise ExportError(f"{t.name}: a 1-D tensor can only be F32")
    try:
        return quants.quantize(data, qtype, importance)
    except ExportError as e:
        raise ExportError(f"{t.name}: {e}") from e


def _declare(w: GGUFWriter, name: str, shape: tuple[int, ...], qtype: Q) -> None:
    if qtype == Q.F32:
        w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    elif qtype == Q.F16:
        w.add_tensor_info(name, shape, np.dtype(np.float16), int(np.prod(shape)) * 2)
    else:
        bshape = quant_shape_to_byte_shape(shape, qtype)
        w.add_tensor_info(name, bshape, np.dtype(np.uint8), int(np.prod(bshape)), raw_dtype=qtype)


def write_gguf(model, config: dict, path: str | os.PathLike, quant: str, vocab: Sequence[KV], *,
               name: str | None = None, extra: Sequence[KV] = (), progress: Progress | None = None,
               importance: Mapping[str, np.ndarray] | None = None) -> GGUFResult:
    """Write `model` (HF layout, adapters fused) to `path` as GGUF with preset `quant`.

    `importance`: {GGUF tensor name: per-column importance} (`imatrix.collect`); the tensors it
    names are quantized by the importance-weighted searches, the rest as llama.cpp's reference
    quantizers do."""
    importance = importance or {}
    t0 = time.perf_counter()
    p = mix.preset(quant)
    arch = gguf_arch(config)
    rope_calls, rope_freqs = _rope(config)
    tensors = collect(model, config)
    n_layers = int(config["num_hidden_layers"])
    types, lossless = _choose_types(p, tensors, n_layers)
    n_vocab = next(t.shape[0] for t in tensors if t.name == "token_embd.weight")
    path = Path(path)
    with atomic_path(path) as tmp:
        w = GGUFWriter(tmp, arch)
        try:
            w.add_name(name or config.get("_name_or_path") or arch)
            w.add_file_type(int(p.file_type))
            if any(q not in (Q.F32, Q.F16, Q.BF16) for q in types.values()):
                w.add_quantization_version(GGML_QUANT_VERSION)
            _hparams(w, config, n_vocab)
            for method, value in rope_calls:
                getattr(w, method)(value)
            for kv in (*vocab, *extra):
                w.add_key_value(kv.key, kv.value, kv.vtype, kv.sub_type)
            if rope_freqs is not None:
                _declare(w, "rope_freqs.weight", rope_freqs.shape, Q.F32)
            for t in tensors:
                _declare(w, t.name, t.shape, types[t.name])
            w.write_header_to_file(tmp)
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            if rope_freqs is not None:
                w.write_tensor_data(rope_freqs)
            for i, t in enumerate(tensors):
                w.write_tensor_data(_encode(t, types[t.name], t.name in lossless, importance.get(t.name)))
                if progress:
                    progress(t.name, i + 1, len(tensors))
            w.flush()
            assert w.fout is not None
            for f in w.fout:
                os.fsync(f.fileno())
        finally:
            w.close()
    return GGUFResult(path=path, preset=p.name, types={n: q.name for n, q in types.items()},
                      lossless=sorted(lossless), sha256=sha256_file(path), n_bytes=path.stat().st_size,
                      seconds=time.perf_counter() - t0)


__all__ = ["GGUFResult", "write_gguf"]
