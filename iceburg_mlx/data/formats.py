"""Record formats: detect one per record, normalise any of them to ChatML messages, convert back.

Formats (keys that identify them):

- ``chatml``: ``{"messages": [{"role", "content"}, ...]}``, roles system / user / assistant
- ``sharegpt``: ``{"conversations": [{"from", "value"}, ...]}``
- ``alpaca``: ``{"instruction", "input", "output"}`` (optional ``system``, ``history``)
- ``completion``: ``{"prompt", "completion"}``
- ``text``: ``{"text"}``
- ``preference``: ``{"prompt" or "messages", "chosen", "rejected"}``

Every converter keeps the fields it does not consume (``id``, ``meta``, scores...).
Functions raise `DataError(reason)`; callers that know the file and line add them.
"""

from __future__ import annotations

from typing import Any

from iceburg_mlx.errors import DataError

FORMATS = ("chatml", "sharegpt", "alpaca", "completion", "text", "preference")
# a recipe's `data.format` -> the record formats it admits (auto: any)
RECIPE_FORMATS: dict[str, tuple[str, ...] | None] = {
    "auto": None, "chat": ("chatml", "sharegpt", "alpaca"), "completions": ("completion",), "text": ("text",),
    "preference": ("preference",)}
TARGETS = ("chatml", "sharegpt", "alpaca")
ROLES = ("system", "user", "assistant")

SHAREGPT_FROM = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
}
SHAREGPT_TO = {"system": "system", "user": "human", "assistant": "gpt"}

# The keys each format consumes; everything else on a record is carried over untouched.
CONSUMED = {
    "chatml": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "completion": ("prompt", "completion"),
    "text": ("text",),
    "preference": ("prompt", "messages", "chosen", "rejected", "system"),
}


def detect_format(record: Any) -> str:
    """Name the format of one record (one of FORMATS); DataError if none fits."""
    if not isinstance(record, dict):
        raise DataError(f"not a JSON object (got {type(record).__name__})")
    if "chosen" in record or "rejected" in record:
        return "preference"
    if "messages" in record:
        return "chatml"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "completion"
    if "text" in record:
        return "text"
    keys = ", ".join(sorted(map(str, record))[:6]) or "none"
    raise DataError(
        f"unknown format (keys: {keys}); expected messages, conversations, "
        "instruction/output, prompt/completion, text or chosen/rejected"
    )


def _msg(role: str, content: Any) -> dict[str, Any]:
    return {"role": role, "content": content}


def _chatml_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise DataError(f"'messages' is not a list (got {type(messages).__name__})")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(f"message {i} is not an object")
        if "role" not in m or "content" not in m:
            raise DataError(f"message {i} lacks 'role' or 'content'")
        out.append(dict(m))
    return out


def _sharegpt_messages(turns: Any) -> list[dict[str, Any]]:
    if not isinstance(turns, list):
        raise DataError(f"'conversations' is not a list (got {type(turns).__name__})")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or "from" not in t or "value" not in t:
            raise DataError(f"conversation turn {i} lacks 'from' or 'value'")
        who = t["from"]
        role = SHAREGPT_FROM.get(who.lower()) if isinstance(who, str) else None
        if role is None:
            raise DataError(f"unknown role {_short(who)} in conversation turn {i}")
        out.append(_msg(role, t["value"]))
    return out


def _alpaca_messages(r: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    if r.get("system"):
        out.append(_msg("system", r["system"]))
    history = r.get("history") or []
    if not isinstance(history, list):
        raise DataError("'history' is not a list of [instruction, output] pairs")
    for i, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DataError(f"history entry {i} is not an [instruction, output] pair")
        out += [_msg("user", pair[0]), _msg("assistant", pair[1])]
    instruction, extra = r.get("instruction", ""), r.get("input", "")
    if isinstance(instruction, str) and isinstance(extra, str) and extra.strip():
        instruction = f"{instruction}\n\n{extra}" if instruction else extra
    out += [_msg("user", instruction), _msg("assistant", r.get("output"))]
    return out


def _answer_text(x: Any, which: str) -> Any:
    """A chosen/rejected answer given as a string or as messages: its assistant text."""
    if isinstance(x, list):
        answers = [m.get("content") for m in x if isinstance(m, dict) and m.get("role") == "assistant"]
        if not answers:
            raise DataError(f"'{which}' has no assistant message")
        return answers[-1]
    return x


def preference_parts(record: dict[str, Any]) -> tuple[list[dict[str, Any]], Any, Any]:
    """(prompt messages, chosen answer, rejected answer) of a preference record."""
    for key in ("chosen", "rejected"):
        if key not in record:
            raise DataError(f"preference pair lacks '{key}'")
    if "messages" in record:
        prompt = _chatml_messages(record["messages"])
    elif "prompt" in record:
        p = record["prompt"]
        prompt = _chatml_messages(p) if isinstance(p, list) else [_msg("user", p)]
        if record.get("system"):
            prompt.insert(0, _msg("system", record["system"]))
    else:
        raise DataError("preference pair lacks 'prompt' or 'messages'")
    return prompt, _answer_text(record["chosen"], "chosen"), _answer_text(record["rejected"], "rejected")


def recipe_formats(name: str) -> tuple[str, ...] | None:
    """The record formats a recipe's `data.format` admits (None: any)."""
    if name not in RECIPE_FORMATS:
        raise DataError(f"data.format: '{name}' is not one of {', '.join(RECIPE_FORMATS)}")
    return RECIPE_FORMATS[name]


def to_messages(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Normalise any supported record to a list of ChatML messages (copies, never the input).

    A preference pair becomes its prompt followed by the chosen answer (its SFT view); plain
    text becomes a single assistant message.
    """
    fmt = detect_format(record)
    if fmt == "chatml":
        return _chatml_messages(record["messages"])
    if fmt == "sharegpt":
        return _sharegpt_messages(record["conversations"])
    if fmt == "alpaca":
        return _alpaca_messages(record)
    if fmt == "completion":
        return [_msg("user", record["prompt"]), _msg("assistant", record["completion"])]
    if fmt == "text":
        return [_msg("assistant", record["text"])]
    prompt, chosen, _ = preference_parts(record)
    return [*prompt, _msg("assistant", chosen)]


def split_prompt(record: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """(the messages up to and including the last user turn, the first assistant answer after it
    or None) of a record in any supported format, or of a bare `{"prompt": str, "system"?: str}`
    (a prompt with no answer). DataError when there is no user turn to answer."""
    try:
        messages = to_messages(record)
    except DataError:
        if not (isinstance(record, dict) and isinstance(record.get("prompt"), str)):
            raise
        messages = [_msg("user", record["prompt"])]
        if record.get("system"):
            messages.insert(0, _msg("system", record["system"]))
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise DataError("no user turn to answer")
    last = users[-1]
    after = [m for m in messages[last + 1:] if m.get("role") == "assistant"]
    ref = after[0].get("content") if after and isinstance(after[0].get("content"), str) else None
    return messages[: last + 1], ref


def _extras(record: dict[str, Any], fmt: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in CONSUMED[fmt]}


def from_messages(messages: list[dict[str, Any]], to: str) -> dict[str, Any]:
    """Write ChatML messages as one record of format `to` (chatml, sharegpt or alpaca)."""
    if to == "chatml":
        return {"messages": [dict(m) for m in messages]}
    if to == "sharegpt":
        return {"conversations": [{"from": SHAREGPT_TO.get(m["role"], m["role"]), "value": m["content"]} for m in messages]}
    if to == "alpaca":
        rest = list(messages)
        out: dict[str, Any] = {}
        if rest and rest[0]["role"] == "system":
            out["system"] = rest.pop(0)["content"]
        roles = [m["role"] for m in rest]
        if len(rest) < 2 or len(rest) % 2 or roles != ["user", "assistant"] * (len(rest) // 2):
            raise DataError("alpaca needs alternating user/assistant turns ending with the assistant")
        history = [[rest[i]["content"], rest[i + 1]["content"]] for i in range(0, len(rest) - 2, 2)]
        out.update({"instruction": rest[-2]["content"], "input": "", "output": rest[-1]["content"]})
        if history:
            out["history"] = history
        return out
    raise DataError(f"unknown target format {to!r}; supported: {', '.join(TARGETS)}")


def convert_record(record: dict[str, Any], to: str) -> dict[str, Any]:
    """Convert one record to `to`, keeping every field the conversion does not use."""
    if to not in TARGETS:
        raise DataError(f"unknown target format {to!r}; supported: {', '.join(TARGETS)}")
    fmt = detect_format(record)
    extras = _extras(record, fmt)
    if fmt == "preference":
        prompt, chosen, rejected = preference_parts(record)
        if to == "alpaca":
            head = from_messages([*prompt, _msg("assistant", "")], "alpaca")
            head.pop("output")
        else:
            head = from_messages(prompt, to)
        return {**head, "chosen": chosen, "rejected": rejected, **extras}
    return {**from_messages(to_messages(record), to), **extras}


def convert_file(src: str, out: str, to: str) -> int:
    """Convert every record of a JSONL file to `to`, written atomically; DataError names file:line."""
    from iceburg_mlx.data.io import iter_jsonl, write_jsonl

    if to not in TARGETS:
        raise DataError(f"unknown target format {to!r}; supported: {', '.join(TARGETS)}")

    def gen() -> Any:
        for n, rec in iter_jsonl(src):
            try:
                yield convert_record(rec, to)
            except DataError as e:
                raise DataError(f"{src}:{n}: {e}") from None

    return write_jsonl(out, gen())


def record_text(record: dict[str, Any], include_system: bool = False) -> str:
    """The conversational text of a record (non-system turns, newline-joined), for dedup and scoring."""
    try:
        msgs = to_messages(record)
    except DataError:
        return ""
    return "\n".join(
        m["content"] for m in msgs if isinstance(m.get("content"), str) and (include_system or m.get("role") != "system")
    )


def assistant_text(record: dict[str, Any]) -> str:
    """The assistant turns of a record joined by blank lines (what a role model learns to say)."""
    try:
        msgs = to_messages(record)
    except DataError:
        return ""
    return "\n\n".join(m["content"] for m in msgs if m.get("role") == "assistant" and isinstance(m.get("content"), str))


def prompt_text(record: dict[str, Any]) -> str:
    """The last user turn before the final assistant answer ('' if none)."""
    try:
        msgs = to_messages(record)
    except DataError:
        return ""
    users = [m["content"] for m in msgs if m.get("role") == "user" and isinstance(m.get("content"), str)]
    return users[-1] if users else ""


def _short(x: Any, n: int = 40) -> str:
    s = repr(x)
    return s if len(s) <= n else s[: n - 3] + "..."
