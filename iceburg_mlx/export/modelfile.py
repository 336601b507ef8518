"""An Ollama Modelfile for an exported GGUF: FROM, a Go TEMPLATE matching the Jinja chat template.

The chat format is recognised from the Jinja template (ChatML, Llama 3, Mistral [INST]); each
family has a registered Go template, stop strings and the shape of its system block. A default
system prompt the Jinja template inserts on its own (SmolLM2 does) becomes the Modelfile SYSTEM, so
Ollama builds the same prompt. The TEMPLATE is checked against the Jinja template on a few
multi-turn conversations with `gotemplate.render_ollama`; `Modelfile.verified` says whether they
agreed (the prompt text up to a leading BOS, which llama.cpp adds as a token).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from iceburg_mlx.errors import ExportError
from iceburg_mlx.export.gotemplate import render_ollama


@dataclass(frozen=True)
class ChatFamily:
    name: str
    marker: str                     # substring that identifies the Jinja template
    template: str                   # Ollama TEMPLATE (Go text/template)
    stops: tuple[str, ...]
    system_block: str | None        # how a system prompt renders: "<prefix>{}<suffix>"; None: no system role


FAMILIES: dict[str, ChatFamily] = {}


def _register(f: ChatFamily) -> None:
    FAMILIES[f.name] = f


_register(ChatFamily(
    "chatml", "<|im_start|>",
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ range .Messages }}{{ if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}{{ end }}<|im_start|>assistant\n",
    ("<|im_start|>", "<|im_end|>"),
    "<|im_start|>system\n{}<|im_end|>\n"))
_register(ChatFamily(
    "llama3", "<|start_header_id|>",
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{ range .Messages }}{{ if ne .Role \"system\" }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{ end }}{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
    ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "<|start_header_id|>system<|end_header_id|>\n\n{}<|eot_id|>"))
_register(ChatFamily(
    "mistral", "[INST]",
    "{{ range .Messages }}{{ if eq .Role \"user\" }}[INST] {{ .Content }} [/INST]"
    "{{ else }}{{ .Content }}</s>{{ end }}{{ end }}",
    ("[INST]", "[/INST]", "</s>"),
    None))


def detect_family(jinja_template: str | None) -> ChatFamily | None:
    if not jinja_template:
        return None
    return next((f for f in FAMILIES.values() if f.marker in jinja_template), None)


def render_jinja(template: str, messages: list[dict], bos: str = "", eos: str = "",
                 add_generation_prompt: bool = True) -> str:
    """Render a Hugging Face chat template as transformers does (sandboxed, trim/lstrip blocks)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, bos_token=bos, eos_token=eos,
                                            add_generation_prompt=add_generation_prompt)


def _strips_bos(template: str, bos: str) -> bool:
    """A template that writes `bos_token` itself: llama.cpp adds that BOS as a token instead."""
    return bool(bos) and "bos_token" in template


def default_system(family: ChatFamily, template: str, bos: str = "", eos: str = "") -> str | None:
    """The system prompt the Jinja template inserts when the conversation has none."""
    if family.system_block is None:
        return None
    text = render_jinja(template, [{"role": "user", "content": "\x00"}], bos, eos)
    if _strips_bos(template, bos) and text.startswith(bos):
        text = text[len(bos):]
    pre, post = family.system_block.split("{}")
    m = re.match(re.escape(pre) + "(.*?)" + re.escape(post), text, re.DOTALL)
    return m.group(1) if m else None


SAMPLE_CONVERSATIONS = (
    [{"role": "user", "content": "Hi there."}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Red."},
     {"role": "user", "content": "Thanks."}],
)


def check_template(family: ChatFamily, template: str, system: str | None, bos: str = "",
                   eos: str = "") -> list[str]:
    """Conversations on which the Go TEMPLATE and the Jinja template disagree (empty: all agree)."""
    bad = []
    systems = [None] + ([system or "You are a test."] if family.system_block else [])
    for sys_prompt in systems:
        for conv in SAMPLE_CONVERSATIONS:
            msgs = ([{"role": "system", "content": sys_prompt}] if sys_prompt else []) + list(conv)
            # Ollama puts the Modelfile SYSTEM first when the conversation has no system message
            jmsgs = msgs if sys_prompt or not system else [{"role": "system", "content": system}] + msgs
            want = render_jinja(template, jmsgs, bos, eos)
            if _strips_bos(template, bos) and want.startswith(bos):
                want = want[len(bos):]
            got = render_ollama(family.template, msgs, system)
            if got != want:
                bad.append(f"system={sys_prompt!r}, {len(conv)} messages")
    return bad


@dataclass
class Modelfile:
    text: str
    family: str | None
    system: str | None
    stops: list[str] = field(default_factory=list)
    verified: bool = False
    mismatches: list[str] = field(default_factory=list)


def _quote(s: str) -> str:
    if '"""' in s:
        raise ExportError('a Modelfile value cannot contain """')
    return f'"""{s}"""'


def build_modelfile(gguf_file: str, chat_template: str | None, *, bos: str = "", eos: str = "",
                    system: str | None = None, temperature: float | None = None, top_p: float | None = None,
                    comment: str = "") -> Modelfile:
    """Modelfile text for `gguf_file` (a name beside the Modelfile) and the model's chat template."""
    family = detect_family(chat_template)
    if family is not None and system and family.system_block is None:
        raise ExportError(f"the {family.name} chat template has no system role; drop the system prompt")
    if family is not None and not system:
        system = default_system(family, chat_template, bos, eos)
    lines = [f"# {comment}"] if comment else []
    lines.append(f"FROM ./{gguf_file}")
    stops: list[str] = []
    mismatches: list[str] = []
    if family is not None:
        lines.append(f"TEMPLATE {_quote(family.template)}")
        stops = list(family.stops)
        mismatches = check_template(family, chat_template, system, bos, eos)
    if system:
        lines.append(f"SYSTEM {_quote(system)}")
    if eos and eos not in stops:
        stops.append(eos)
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    if temperature is not None:
        lines.append(f"PARAMETER temperature {temperature:g}")
    if top_p is not None:
        lines.append(f"PARAMETER top_p {top_p:g}")
    return Modelfile("\n".join(lines) + "\n", family.name if family else None, system, stops,
                     verified=family is not None and not mismatches, mismatches=mismatches)


__all__ = [
    "FAMILIES",
    "ChatFamily",
    "Modelfile",
    "build_modelfile",
    "check_template",
    "default_system",
    "detect_family",
    "render_jinja",
]
