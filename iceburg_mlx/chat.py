"""A multi-turn chat session whose KV cache outlives each turn.

Each turn renders the whole conversation with the chat template, finds the longest prefix of it
that the cache already holds, trims the cache back to that prefix if needed, and runs only the
rest: turn two does not re-process turn one.
"""

from __future__ import annotations

from collections.abc import Iterator

from iceburg_mlx.generation import GenerationStats, Piece, make_cache, stream
from iceburg_mlx.sampling import SamplingParams
from iceburg_mlx.templates import chat_prompt, common_prefix, with_system


class ChatSession:
    def __init__(self, model, tokenizer, system: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.system = system
        self.messages: list[dict] = []
        self.cache = make_cache(model)
        self.cache_tokens: list[int] = []   # exactly the tokens whose keys/values the cache holds
        self.last_stats: GenerationStats | None = None

    def conversation(self) -> list[dict]:
        return with_system(self.messages, self.system)

    def reset(self) -> None:
        self.messages = []
        self.cache = make_cache(self.model)
        self.cache_tokens = []

    def set_system(self, text: str | None) -> None:
        self.system = text or None
        self.reset()

    def _reuse(self, ids: list[int]) -> int:
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        keep = min(common_prefix(self.cache_tokens, ids), len(ids) - 1)  # always process >= 1 token
        drop = len(self.cache_tokens) - keep
        if drop > 0:
            if can_trim_prompt_cache(self.cache):
                trim_prompt_cache(self.cache, drop)
            else:
                self.cache, keep = make_cache(self.model), 0
        self.cache_tokens = self.cache_tokens[:keep]
        return keep

    def send(self, text: str, params: SamplingParams) -> Iterator[Piece]:
        """Add a user turn and stream the assistant's answer; the answer joins the history."""
        self.messages.append({"role": "user", "content": text})
        ids = chat_prompt(self.tokenizer, self.conversation())
        keep = self._reuse(ids)
        stats = GenerationStats(cached_tokens=keep)
        generated: list[int] = []
        parts: list[str] = []
        try:
            for piece in stream(self.model, self.tokenizer, ids[keep:], params, self.cache, stats, generated):
                parts.append(piece.text)
                yield piece
        finally:  # also on Ctrl-C or an abandoned generator: keep the session consistent
            if stats.finish_reason is None:
                stats.finish_reason = "interrupted"
            held = self.cache[0].offset if self.cache else 0
            self.cache_tokens = (ids + generated)[:held]
            self.messages.append({"role": "assistant", "content": "".join(parts)})
            self.last_stats = stats
