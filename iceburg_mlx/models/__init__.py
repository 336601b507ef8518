"""One model loader: a name, a path, a Hub repo id or an Ollama tag -> an mlx-lm model + tokenizer.

    from iceburg_mlx.models import load_model
    loaded = load_model("smollm2-135m-instruct")          # the embedded default
    loaded = load_model("path/to/model.gguf")              # llama / mistral / qwen2 GGUF
    loaded = load_model("mlx-community/Qwen2.5-0.5B-Instruct-4bit")
    loaded = load_model("llama3.2:3b")                     # from the local Ollama store

Whatever the source, the in-memory layout is Hugging Face's (GGUF q/k rows are un-permuted at
load), so an adapter trained on one source works on the others and in `mlx_lm`.
"""

from iceburg_mlx.models.loader import LoadedModel, load_model
from iceburg_mlx.models.resolve import ModelSource, resolve

__all__ = ["LoadedModel", "ModelSource", "load_model", "resolve"]
