"""A small renderer for the subset of Go's text/template that our Ollama TEMPLATEs use.

Covers text, `{{ .Field }}` / `{{ $.Field }}` / `{{ . }}`, `{{ if X }}`, `{{ else }}`,
`{{ else if X }}`, `{{ range X }}`, `{{ end }}`, `eq` / `ne` / `and` / `or` / `not` calls, string
literals and the `{{-` / `-}}` whitespace trims. `render_ollama` prepares the values as Ollama's
chat endpoint does (the Modelfile SYSTEM becomes a leading system message when the conversation
has none; `.System` joins the system messages; consecutive messages of one role are merged), so a
Modelfile TEMPLATE can be checked against the model's Jinja chat template without Ollama.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from iceburg_mlx.errors import ExportError

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.DOTALL)


@dataclass
class _Node:
    kind: str                      # "text" | "expr" | "if" | "range"
    arg: str = ""
    body: list = field(default_factory=list)
    orelse: list = field(default_factory=list)


def _lex(src: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(src):
        text = src[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        if out and out[-1][0] == "trim":
            out.pop()
            text = text.lstrip()
        out.append(("text", text))
        out.append(("action", m.group(2)))
        if m.group(3):
            out.append(("trim", ""))
        pos = m.end()
    text = src[pos:]
    if out and out[-1][0] == "trim":
        out.pop()
        text = text.lstrip()
    out.append(("text", text))
    return out


def parse(src: str) -> list[_Node]:
    tokens = _lex(src)
    pos = 0

    def block(stop: tuple[str, ...]) -> tuple[list[_Node], str]:
        nonlocal pos
        nodes: list[_Node] = []
        while pos < len(tokens):
            kind, val = tokens[pos]
            pos += 1
            if kind == "text":
                if val:
                    nodes.append(_Node("text", val))
                continue
            word = val.split(None, 1)[0] if val else ""
            if word in ("end", "else"):
                if word not in stop:
                    raise ExportError(f"template: unexpected {{{{ {val} }}}}")
                return nodes, val
            if word in ("if", "range"):
                node = _Node(word, val[len(word):].strip())
                node.body, closer = block(("end", "else"))
                finish(node, closer)
                nodes.append(node)
                continue
            nodes.append(_Node("expr", val))
        if stop:
            raise ExportError("template: missing {{ end }}")
        return nodes, ""

    def finish(node: _Node, closer: str) -> None:
        """Parse what follows an `else` / `else if X` up to the closing `end`."""
        if closer == "end":
            return
        rest = closer[4:].strip()
        if rest.startswith("if "):
            inner = _Node("if", rest[3:].strip())
            inner.body, after = block(("end", "else"))
            finish(inner, after)
            node.orelse = [inner]
        else:
            node.orelse, _ = block(("end",))

    nodes, _ = block(())
    return nodes


def _truthy(v: Any) -> bool:
    return bool(v)


def _value(tok: str, dot: Any, root: Any) -> Any:
    if tok.startswith('"'):
        return shlex.split(tok)[0]
    if tok == ".":
        return dot
    if tok.startswith("$"):
        obj, path = root, tok[1:].lstrip(".")
    elif tok.startswith("."):
        obj, path = dot, tok[1:]
    else:
        raise ExportError(f"template: unsupported operand {tok!r}")
    for part in filter(None, path.split(".")):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part, None)
    return obj


def _eval(expr: str, dot: Any, root: Any) -> Any:
    parts = re.findall(r'"(?:[^"\\]|\\.)*"|\S+', expr)
    if not parts:
        raise ExportError("template: empty action")
    fn, args = parts[0], [_value(p, dot, root) for p in parts[1:]]
    if fn == "eq":
        return any(args[0] == a for a in args[1:])
    if fn == "ne":
        return args[0] != args[1]
    if fn == "and":
        return all(_truthy(a) for a in args)
    if fn == "or":
        return any(_truthy(a) for a in args)
    if fn == "not":
        return not _truthy(args[0])
    if len(parts) > 1:
        raise ExportError(f"template: unsupported function {fn!r}")
    return _value(fn, dot, root)


def _run(nodes: list[_Node], dot: Any, root: Any, out: list[str]) -> None:
    for n in nodes:
        if n.kind == "text":
            out.append(n.arg)
        elif n.kind == "expr":
            v = _eval(n.arg, dot, root)
            out.append("" if v is None else str(v))
        elif n.kind == "if":
            _run(n.body if _truthy(_eval(n.arg, dot, root)) else n.orelse, dot, root, out)
        else:  # range
            items = _eval(n.arg, dot, root) or []
            if items:
                for item in items:
                    _run(n.body, item, root, out)
            else:
                _run(n.orelse, dot, root, out)


def render(src: str, values: dict) -> str:
    out: list[str] = []
    _run(parse(src), values, values, out)
    return "".join(out)


def render_ollama(src: str, messages: list[dict], system: str | None = None) -> str:
    """The prompt Ollama's /api/chat would build from `src`, a conversation and the Modelfile SYSTEM."""
    msgs = [dict(m) for m in messages]
    if system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    collated: list[dict] = []
    for m in msgs:
        if collated and collated[-1]["role"] == m["role"]:
            collated[-1]["content"] += "\n\n" + m["content"]
        else:
            collated.append({"Role": m["role"], "Content": m["content"], "role": m["role"], "content": m["content"]})
    for m in collated:
        m["Content"] = m["content"]
    sys_text = "\n\n".join(m["content"] for m in msgs if m["role"] == "system")
    return render(src, {"System": sys_text, "Messages": collated, "Prompt": "", "Response": ""})


__all__ = ["parse", "render", "render_ollama"]
