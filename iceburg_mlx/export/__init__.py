"""Export: fused safetensors, GGUF writer and quantizers, Ollama Modelfile."""
