"""The chat template: the one place that turns messages into token ids and back.

    chat_prompt(tok, messages)        ids of a conversation, ready for the assistant's turn
    with_system(messages, prompt)     the messages with a system prompt first (unless they have one)
    assistant_mask(tok, messages)     ids of a whole conversation and 1 on the assistant answers
    stop_ids(tok)                     the end-of-turn / end-of-text ids
    common_prefix(a, b)               the length of the shared start of two id lists

Training (the masks), generation and chat (prompts, stops, KV-cache reuse), serving, eval and
export (calibration text) all render conversations here, so a template change is made once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iceburg_mlx.errors import DataError

Messages = list[dict[str, Any]]


def chat_prompt(tokenizer, messages: Messages, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `messages` under the model's chat template (plain text if it has none)."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                            tokenize=True)
        if isinstance(ids, dict):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    text = "\n\n".join(m["content"] for m in messages)
    return list(tokenizer.encode(text))


def with_system(messages: Messages, system_prompt: str | None) -> Messages:
    """`messages` with `system_prompt` as a first system message, unless they start with one
    (or the prompt is empty)."""
    if system_prompt and (not messages or messages[0].get("role") != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return list(messages)


def stop_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "eos_token_ids", None) or [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def assistant_mask(tokenizer, messages: Messages) -> tuple[list[int], list[int]]:
    """(token ids of the whole conversation, 1 on assistant-answer tokens and 0 elsewhere).

    Each assistant answer is masked up to and including its end-of-turn token (the model must
    learn to stop), not the template's newline after it. The spans are found by rendering
    prefixes of the conversation with the chat template, so any template works."""
    if not any(m.get("role") == "assistant" for m in messages):
        raise DataError("conversation has no assistant turn to score")
    ids = chat_prompt(tokenizer, messages, add_generation_prompt=False)
    eos = stop_ids(tokenizer)
    mask = [0] * len(ids)
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        start = common_prefix(ids, chat_prompt(tokenizer, messages[:i], add_generation_prompt=True)) if i else 0
        end = common_prefix(ids, chat_prompt(tokenizer, messages[: i + 1], add_generation_prompt=False))
        stops = [j for j in range(start, end) if ids[j] in eos]
        if stops:  # end at the end-of-turn token: the template's newline after it is not the answer
            end = stops[-1] + 1
        for j in range(start, end):
            mask[j] = 1
    return ids, mask


__all__ = ["Messages", "assistant_mask", "chat_prompt", "common_prefix", "stop_ids", "with_system"]
