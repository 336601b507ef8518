"""OpenAI-compatible server with per-row role adapters."""
