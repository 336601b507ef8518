"""The `tokenizer.*` GGUF metadata of an exported model.

From a GGUF source the keys are copied as they were (types by key, as llama.cpp defines them).
From a Hugging Face directory they are built from tokenizer.json: a byte-level BPE becomes
llama.cpp's "gpt2" tokenizer (tokens, merges, token types); a byte-fallback BPE or a Unigram
model becomes its "llama" (sentencepiece) tokenizer (tokens, scores, token types). The token list
is padded to the embedding's row count with unused tokens, as llama.cpp's converter does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFValueType as V
from gguf import TokenType

from iceburg_mlx.errors import ExportError


@dataclass(frozen=True)
class KV:
    key: str
    value: Any
    vtype: V
    sub_type: V | None = None


_ARRAYS = {"tokenizer.ggml.tokens": V.STRING, "tokenizer.ggml.merges": V.STRING,
           "tokenizer.ggml.token_type": V.INT32, "tokenizer.ggml.scores": V.FLOAT32,
           "tokenizer.ggml.precompiled_charsmap": V.UINT8}


def _typed(key: str, value: Any) -> KV:
    if key in _ARRAYS:
        return KV(key, list(value), V.ARRAY, _ARRAYS[key])
    if isinstance(value, bool):
        return KV(key, value, V.BOOL)
    if isinstance(value, int):
        return KV(key, value, V.UINT32 if key.endswith("_id") or value >= 0 else V.INT32)
    if isinstance(value, float):
        return KV(key, value, V.FLOAT32)
    if isinstance(value, str):
        return KV(key, value, V.STRING)
    if isinstance(value, list):
        sub = V.STRING if all(isinstance(v, str) for v in value) else V.INT32
        return KV(key, value, V.ARRAY, sub)
    raise ExportError(f"metadata key '{key}' has a value of unsupported type {type(value).__name__}")


def from_gguf_metadata(metadata: dict[str, Any]) -> list[KV]:
    """Every `tokenizer.*` key of a GGUF's metadata, typed for the writer."""
    return [_typed(k, v) for k, v in metadata.items() if k.startswith("tokenizer.")]


def _token_text(entry: Any) -> str | None:
    if isinstance(entry, dict):
        return entry.get("content")
    return entry if isinstance(entry, str) else None


_LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"


def _pre_tokenizer(tok: dict, model_type: str) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE (its regex set)."""
    text = json.dumps(tok.get("pre_tokenizer") or {})
    if model_type == "qwen2":
        return "qwen2"
    if json.dumps(_LLAMA3_SPLIT)[1:-1] in text:
        return "llama-bpe"
    return "default"


def from_hf_dir(path: Path, config: dict, n_vocab: int) -> list[KV]:
    """Tokenizer metadata from tokenizer.json + tokenizer_config.json; `n_vocab`: embedding rows."""
    try:
        tok = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: cannot read tokenizer.json for the GGUF vocabulary ({e})") from None
    try:
        tcfg = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        tcfg = {}
    model = tok.get("model") or {}
    kind = model.get("type")
    added = {int(a["id"]): a for a in tok.get("added_tokens", [])}
    if kind == "Unigram":
        pieces = [(p[0], float(p[1])) for p in model.get("vocab", [])]
        vocab = {t: i for i, (t, _) in enumerate(pieces)}
        scores = {i: s for i, (_, s) in enumerate(pieces)}
    elif kind == "BPE":
        vocab = dict(model.get("vocab", {}))
        scores = {i: -float(i) for i in vocab.values()}
    else:
        raise ExportError(f"{path}: tokenizer model '{kind}' cannot be written to GGUF (BPE, Unigram)")
    by_id = {i: t for t, i in vocab.items()}
    by_id.update({i: a["content"] for i, a in added.items()})
    if by_id and max(by_id) >= n_vocab:
        raise ExportError(f"{path}: tokenizer has id {max(by_id)} but the embedding has {n_vocab} rows")
    spm = kind == "Unigram" or bool(model.get("byte_fallback"))
    unk = model.get("unk_token")
    tokens, types, score_list = [], [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(text)
            if i in added:
                types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
            elif spm and text == unk:
                types.append(TokenType.UNKNOWN)
            elif spm and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
                types.append(TokenType.BYTE)
            else:
                types.append(TokenType.NORMAL)
        score_list.append(scores.get(i, -1000.0))
    out = [KV("tokenizer.ggml.model", "llama" if spm else "gpt2", V.STRING)]
    if spm:
        out.append(KV("tokenizer.ggml.scores", score_list, V.ARRAY, V.FLOAT32))
        prefix = "Prepend" in json.dumps(tok.get("normalizer") or {}) or "Metaspace" in json.dumps(
            tok.get("pre_tokenizer") or {})
        out.append(KV("tokenizer.ggml.add_space_prefix", prefix, V.BOOL))
    else:
        out.append(KV("tokenizer.ggml.pre", _pre_tokenizer(tok, config.get("model_type", "")), V.STRING))
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        out.append(KV("tokenizer.ggml.merges", merges, V.ARRAY, V.STRING))
    out.append(KV("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING))
    out.append(KV("tokenizer.ggml.token_type", [int(t) for t in types], V.ARRAY, V.INT32))
    ids = {t: i for i, t in enumerate(tokens)}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        text = _token_text(tcfg.get(name))
        idx = ids.get(text) if text is not None else None
        if idx is None and name in ("bos_token", "eos_token"):
            cid = config.get(f"{name}_id")
            idx = cid[0] if isinstance(cid, list) and cid else cid
        if isinstance(idx, int) and 0 <= idx < n_vocab:
            out.append(KV(f"tokenizer.ggml.{key}", idx, V.UINT32))
    out.append(KV("tokenizer.ggml.add_bos_token", bool(tcfg.get("add_bos_token", spm)), V.BOOL))
    out.append(KV("tokenizer.ggml.add_eos_token", bool(tcfg.get("add_eos_token", False)), V.BOOL))
    template = chat_template_of(path, tcfg)
    if template:
        out.append(KV("tokenizer.chat_template", template, V.STRING))
    return out


def chat_template_of(path: Path, tcfg: dict | None = None) -> str | None:
    """The Jinja chat template of an HF directory (tokenizer_config.json or chat_template.jinja)."""
    if tcfg is None:
        try:
            tcfg = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            tcfg = {}
    t = tcfg.get("chat_template")
    if isinstance(t, list):  # named templates: take "default"
        t = next((x.get("template") for x in t if x.get("name") == "default"), None)
    if not t and (path / "chat_template.jinja").is_file():
        t = (path / "chat_template.jinja").read_text(encoding="utf-8")
    return t or None


__all__ = ["KV", "chat_template_of", "from_gguf_metadata", "from_hf_dir"]
