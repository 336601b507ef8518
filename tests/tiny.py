"""Tiny random llama models built on the fly: an HF directory and GGUF files written independently.

The GGUF writer here is test-only and deliberately separate from the library: it applies
llama.cpp's q/k row permutation as `convert_hf_to_gguf.py` does, so loading it checks our
un-permutation, and llama.cpp itself can read the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import iceburg_mlx  # noqa: F401  (OpenBLAS preload before mlx.core)

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 256, 2, 4, 2, 512   # 256-wide rows so K-quants apply
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def vocab() -> tuple[list[str], list[str]]:
    """Special tokens, the 256 byte symbols and a few merged pairs; returns (tokens, merges)."""
    byte_syms = list(bytes_to_unicode().values())
    pairs = [("t", "h"), ("th", "e"), ("Ġ", "t"), ("i", "n"), ("a", "n"), ("e", "r")]
    merges, merged = [], []
    for a, b in pairs:
        merges.append(f"{a} {b}")
        merged.append(a + b)
    return SPECIALS + byte_syms + merged, merges


def config(vocab_size: int, model_type: str = "llama") -> dict:
    return {
        "model_type": model_type, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "intermediate_size": FFN, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-5, "vocab_size": vocab_size, "rope_theta": 10000.0,
        "max_position_embeddings": 512, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2,
    }


def random_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd

    def lin(o, i):
        return (rng.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((v, h)).astype(np.float32),
         "model.norm.weight": (1 + 0.1 * rng.standard_normal(h)).astype(np.float32),
         "lm_head.weight": lin(v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)
        w[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)
        w[p + "self_attn.q_proj.weight"] = lin(h, h)
        w[p + "self_attn.k_proj.weight"] = lin(kv, h)
        w[p + "self_attn.v_proj.weight"] = lin(kv, h)
        w[p + "self_attn.o_proj.weight"] = lin(h, h)
        w[p + "mlp.gate_proj.weight"] = lin(f, h)
        w[p + "mlp.up_proj.weight"] = lin(f, h)
        w[p + "mlp.down_proj.weight"] = lin(h, f)
        if cfg["model_type"] == "qwen2":  # qwen2 has q/k/v biases
            for n, o in (("q", h), ("k", kv), ("v", kv)):
                w[p + f"self_attn.{n}_proj.bias"] = (0.1 * rng.standard_normal(o)).astype(np.float32)
    return w


def write_hf_dir(path: Path, seed: int = 0, model_type: str = "llama") -> Path:
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path.mkdir(parents=True, exist_ok=True)
    tokens, merges = vocab()
    cfg = config(len(tokens), model_type)
    save_file(random_weights(cfg, seed), str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(cfg))
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                     merges=[tuple(m.split(" ")) for m in merges])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE, "add_bos_token": False}))
    return path


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """As llama.cpp's convert_hf_to_gguf.py permutes q/k rows for its rotary form."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
BLOCK = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
         "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down"}


def gguf_name(hf: str) -> str:
    if hf in GGUF_NAMES:
        return GGUF_NAMES[hf]
    _, _, i, rest = hf.split(".", 3)
    mod, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{BLOCK[mod]}.{kind}"


def write_gguf(hf_dir: Path, out: Path, qtype: str = "F32", arch: str | None = None) -> Path:
    """Write the HF directory's model as GGUF; 2-D weights in `qtype`, norms in F32."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    arch = arch or cfg["model_type"]
    weights = load_file(str(hf_dir / "model.safetensors"))
    tokens, merges = vocab()
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name("tiny-test")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_vocab_size(len(tokens))
    w.add_file_type({"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "BF16": 32}[qtype])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    q = getattr(gguf.GGMLQuantizationType, qtype)
    for name, arr in weights.items():
        if name.endswith("q_proj.weight") and arch == "llama":
            arr = llama_cpp_permute(arr, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight") and arch == "llama":
            arr = llama_cpp_permute(arr, cfg["num_key_value_heads"])
        if arr.ndim == 2 and q != gguf.GGMLQuantizationType.F32:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(arr, q), raw_dtype=q)
        else:
            w.add_tensor(gguf_name(name), arr.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
