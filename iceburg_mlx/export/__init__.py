"""Export: fused safetensors, GGUF writer and quantizers, Ollama Modelfile.

    from iceburg_mlx.export import fuse, FuseOptions
    fuse(FuseOptions(out="dist/oracle", adapter="runs/oracle", to_gguf=True, quant="q4_k_m"))

Modules: `fusion` (fuse(): orchestration, provenance), `hf_dir` (HF directory), `gguf_export` (GGUF file),
`tensors` (model tensors under GGUF names, lossless Q4_1/Q8_0 bytes), `mix` (per-tensor types of
each preset), `quants` (Q4_K / Q6_K block quantizers), `gguf_vocab` (tokenizer metadata),
`modelfile` + `gotemplate` (Ollama Modelfile and its template check), `atomic` (atomic writes).
"""

from __future__ import annotations

__all__ = ["FuseOptions", "FuseResult", "fuse"]


def __getattr__(name: str):
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("iceburg_mlx.export.fusion"), name)
    raise AttributeError(name)
