"""GGUF (llama family) -> Hugging Face-layout weights, an mlx-lm config and a tokenizer.

F32/F16/Q8_0/Q4_0/Q4_1 are read by `mx.load` (quantized ones as MLX affine group-32 arrays);
any other type (BF16, Q4_K, Q5_K, Q6_K, ...) is dequantized to f32 with the `gguf` package's NumPy
dequantizers. llama.cpp stores llama q/k rows permuted for its rotary form; they are un-permuted
here so the model runs with its normal rope setting (the canonical Hugging Face layout).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as Q

from iceburg_mlx.errors import BadModelFileError, UnsupportedModelError
from iceburg_mlx.models.gguf_file import GGUFFile

# GGUF general.architecture -> mlx-lm model_type. llama covers Mistral and SmolLM GGUFs.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}
PERMUTED_QK = {"llama"}  # architectures whose q/k rows llama.cpp's converter permutes
MX_NATIVE = {Q.F32, Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1}

_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
HF_TO_GGUF_BLOCK = {v: k for k, v in _BLOCK_NAMES.items()}
HF_TO_GGUF_GLOBAL = {v: k for k, v in _GLOBAL_NAMES.items()}


def architecture(g: GGUFFile) -> str:
    arch = g.metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"{g.path}: architecture '{arch}' is not supported (supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    return arch


def hf_name(gguf_name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight` (None: not a model weight)."""
    base, _, kind = gguf_name.rpartition(".")
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{kind}"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{kind}"
    return None


def permute_rows(w, n_head: int, inverse: bool):
    """llama.cpp's rotary permutation of q/k rows (works on packed quantized rows too)."""
    rows = w.shape[0]
    half = rows // n_head // 2
    rest = tuple(w.shape[1:])
    if inverse:  # GGUF -> HF
        return w.reshape(n_head, half, 2, *rest).swapaxes(1, 2).reshape(w.shape)
    return w.reshape(n_head, 2, half, *rest).swapaxes(1, 2).reshape(w.shape)


def _meta(md: dict, key: str, default: Any = None, required: bool = False, path: Path | None = None):
    if key in md:
        return md[key]
    if required:
        raise BadModelFileError(f"{path}: GGUF metadata key '{key}' is missing")
    return default


def model_config(g: GGUFFile) -> dict[str, Any]:
    """An mlx-lm (Hugging Face style) config dict from the GGUF metadata."""
    arch = architecture(g)
    md, p = g.metadata, g.path

    def req(k):
        return _meta(md, f"{arch}.{k}", required=True, path=p)

    n_heads = int(req("attention.head_count"))
    hidden = int(req("embedding_length"))
    vocab = len(md.get("tokenizer.ggml.tokens", [])) or int(req("vocab_size"))
    cfg: dict[str, Any] = {
        "model_type": ARCHITECTURES[arch],
        "hidden_size": hidden,
        "num_hidden_layers": int(req("block_count")),
        "intermediate_size": int(req("feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(md.get(f"{arch}.attention.head_count_kv", n_heads)),
        "rms_norm_eps": float(req("attention.layer_norm_rms_epsilon")),
        "vocab_size": vocab,
        "rope_theta": float(md.get(f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(md.get(f"{arch}.context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in g.tensors,
    }
    key_len = md.get(f"{arch}.attention.key_length")
    if key_len is not None and int(key_len) != hidden // n_heads:
        cfg["head_dim"] = int(key_len)
    if arch == "llama" and "blk.0.attn_q.bias" in g.tensors:
        cfg["attention_bias"] = True
    scaling = _rope_scaling(g, arch, cfg)
    if scaling:
        cfg["rope_scaling"] = scaling
    return cfg


def _rope_scaling(g: GGUFFile, arch: str, cfg: dict) -> dict | None:
    md = g.metadata
    kind = md.get(f"{arch}.rope.scaling.type")
    if kind in (None, "none") and "rope_freqs.weight" not in g.tensors:
        return None
    if kind == "linear":
        return {"type": "linear", "factor": float(md[f"{arch}.rope.scaling.factor"])}
    if "rope_freqs.weight" in g.tensors:  # Llama 3.1+: per-frequency factors; recover the llama3 params
        freqs = _read_f32(g, "rope_freqs.weight")
        factor = float(freqs.max())
        orig = int(md.get(f"{arch}.rope.scaling.original_context_length", 8192))
        scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": orig}
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        if not np.allclose(_llama3_factors(head_dim, cfg["rope_theta"], scaling), freqs, rtol=1e-3):
            raise UnsupportedModelError(f"{g.path}: rope_freqs do not match a llama3 rope scaling")
        return scaling
    raise UnsupportedModelError(f"{g.path}: rope scaling type '{kind}' is not supported")


def _llama3_factors(head_dim: int, theta: float, s: dict) -> np.ndarray:
    freqs = theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # 1 / inv_freq
    wavelen = 2 * np.pi * freqs
    low_wl = s["original_max_position_embeddings"] / s["low_freq_factor"]
    high_wl = s["original_max_position_embeddings"] / s["high_freq_factor"]
    smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
        s["high_freq_factor"] - s["low_freq_factor"])
    out = np.where(wavelen > low_wl, s["factor"], 1.0)
    mid = (wavelen <= low_wl) & (wavelen >= high_wl)
    return np.where(mid, 1.0 / ((1 - smooth) / s["factor"] + smooth), out)


def _read_f32(g: GGUFFile, name: str) -> np.ndarray:
    t = g.tensors[name]
    from gguf.quants import dequantize

    try:
        return np.asarray(dequantize(np.asarray(g.raw(name)).reshape(t.shape[0] if len(t.shape) > 1 else 1, -1),
                                     t.qtype), dtype=np.float32).reshape(t.shape)
    except NotImplementedError:
        raise UnsupportedModelError(f"{g.path}: tensor '{name}' has type {t.qtype.name}, which cannot be read") from None


def read_weights(g: GGUFFile) -> dict[str, Any]:
    """All model tensors under Hugging Face names, q/k un-permuted.

    Natively supported types come back as MLX arrays (quantized as `<name>.weight/.scales/.biases`);
    others as f32 MLX arrays.
    """
    import mlx.core as mx

    arch = architecture(g)
    unknown = [n for n in g.tensors if hf_name(n) is None and n != "rope_freqs.weight"]
    if unknown:
        raise UnsupportedModelError(f"{g.path}: unexpected tensors for '{arch}': {', '.join(unknown[:4])}")
    if all(t.qtype in MX_NATIVE for t in g.tensors.values()):
        try:
            raw = mx.load(str(g.path), format="gguf")
        except (RuntimeError, ValueError) as e:
            raise BadModelFileError(f"{g.path}: {e}") from None
    else:
        raw = {n: mx.array(_read_f32(g, n)) for n in g.tensors if n != "rope_freqs.weight"}
    cfg_heads = int(g.metadata[f"{arch}.attention.head_count"])
    cfg_kv = int(g.metadata.get(f"{arch}.attention.head_count_kv", cfg_heads))
    out: dict[str, Any] = {}
    for name, arr in raw.items():
        base, _, kind = name.rpartition(".")
        if base == "rope_freqs":
            continue
        if kind in ("scales", "biases"):  # MLX's companions of a quantized weight
            target = hf_name(base + ".weight")
            target = target[: -len("weight")] + kind
            gname = base + ".weight"
        else:
            target, gname = hf_name(name), name
        if arch in PERMUTED_QK and (gname.endswith("attn_q.weight") or gname.endswith("attn_q.bias")
                                    or gname.endswith("attn_k.weight") or gname.endswith("attn_k.bias")):
            n_head = cfg_heads if ".attn_q." in gname else cfg_kv
            arr = permute_rows(arr, n_head, inverse=True)
        out[target] = arr
    return out


def _tokenizer_cache_dir(g: GGUFFile) -> Path:
    from iceburg_mlx.models.default import home_dir

    st = g.path.stat()
    key = hashlib.sha256(f"{g.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return home_dir() / "tokenizers" / key


def load_tokenizer(g: GGUFFile):
    """An mlx-lm TokenizerWrapper built from the GGUF metadata (cached as tokenizer.json)."""
    from mlx_lm.tokenizer_utils import load as load_wrapper

    md = g.metadata
    tokens = md.get("tokenizer.ggml.tokens")
    if not tokens:
        raise BadModelFileError(f"{g.path}: no tokenizer in the GGUF metadata (tokenizer.ggml.tokens)")
    eos_ids = sorted({int(md[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
                      if k in md})
    cache = _tokenizer_cache_dir(g)
    if not (cache / "tokenizer.json").is_file():
        _build_tokenizer_dir(g, cache)
    return load_wrapper(cache, eos_token_ids=eos_ids)


def _build_tokenizer_dir(g: GGUFFile, dest: Path) -> None:
    import tempfile

    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    md = g.metadata
    groups = {grp: {name: md[f"tokenizer.{k}"] for k, name in keys.items() if f"tokenizer.{k}" in md}
              for grp, keys in GGUF_TOKENIZER_MAPPING.items()}
    tok_dict, tok_cfg = groups["tokenizer"], groups["tokenizer_config"]
    if tok_dict.get("tokenizer_type") == "llama":
        tok_cfg.setdefault("add_bos_token", True)  # llama.cpp's default for sentencepiece vocabularies
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        idx = md.get(f"tokenizer.ggml.{key}")
        if idx is not None and 0 <= int(idx) < len(tok_dict["tokens"]):
            tok_cfg[name] = tok_dict["tokens"][int(idx)]
    try:
        backend, _ = convert_gguf_tokenizer(md["general.architecture"], tok_dict)
    except ValueError as e:
        raise UnsupportedModelError(f"{g.path}: {e}") from None
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **tok_cfg)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=dest.parent))
    tok.save_pretrained(str(tmp))
    try:
        os.replace(tmp, dest)
    except OSError:  # another process won the race; theirs is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def source_metadata(g: GGUFFile) -> dict[str, Any]:
    """A small JSON-able summary for provenance and doctor."""
    types: dict[str, int] = {}
    for t in g.tensors.values():
        types[t.qtype.name] = types.get(t.qtype.name, 0) + 1
    return {"format": "gguf", "architecture": g.metadata.get("general.architecture"),
            "name": g.metadata.get("general.name"), "tensor_types": types,
            "chat_template": bool(g.metadata.get("tokenizer.chat_template"))}


__all__ = ["read_weights", "model_config", "load_tokenizer", "source_metadata", "permute_rows",
           "hf_name", "HF_TO_GGUF_BLOCK", "HF_TO_GGUF_GLOBAL", "ARCHITECTURES"]
