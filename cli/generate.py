"""`iceburg-mlx generate` and `iceburg-mlx chat`."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from iceburg_mlx.cli.app import app
from iceburg_mlx.cli.options import NoRepeatNgramOpt, RepetitionPenaltyOpt

ModelOpt = typer.Option(None, "--model", "-m", help="Model: name, path, Hub repo id or Ollama tag (default: smollm2-135m-instruct).")
AdapterOpt = typer.Option(None, "--adapter", "-a", help="Adapter to apply: registry name (oracle, oracle@3) or directory.")
ForceOpt = typer.Option(False, "--force", help="Load an adapter trained on another base (a warning instead of an error).")
SystemOpt = typer.Option(None, "--system", "-s",
                         help="System prompt (default with --adapter: the one it was trained with; '' for none).")


def _load(model: Optional[str], adapter: Optional[str], force: bool = False):
    from iceburg_mlx.cli import ui
    from iceburg_mlx.adapters import load_with_adapter

    err = ui.console(stderr=True)
    if err.is_terminal:
        with err.status("loading model...", spinner="dots"):
            loaded = load_with_adapter(model, adapter=adapter, force=force)
    else:
        loaded = load_with_adapter(model, adapter=adapter, force=force)
    for w in loaded.info.get("warnings", []):
        err.print(f"warning: {w}", markup=False, highlight=False)
    return loaded


def _system(system: Optional[str], adapter: Optional[str]) -> Optional[str]:
    """--system as given; without it, the adapter's training system prompt (a role adapter answers
    in its role)."""
    if system is not None or not adapter:
        return system or None
    from iceburg_mlx.adapters import role_system_prompt

    return role_system_prompt(adapter)


def _stats_line(stats) -> str:
    return (f"prompt {stats.prompt_tokens} tok @ {stats.prompt_tps:.1f} tok/s"
            + (f" (+{stats.cached_tokens} cached)" if stats.cached_tokens else "")
            + f" | decode {stats.completion_tokens} tok @ {stats.decode_tps:.1f} tok/s"
            + f" | peak {stats.peak_memory_bytes / 2**20:.0f} MiB | {stats.finish_reason}")


@app.command()
def generate(
    prompt: str = typer.Option(..., "--prompt", "-p", help="User message (use - to read stdin)."),
    model: Optional[str] = ModelOpt,
    adapter: Optional[str] = AdapterOpt,
    system: Optional[str] = SystemOpt,
    max_tokens: int = typer.Option(256, "--max-tokens", "-n", help="Most new tokens."),
    temp: float = typer.Option(0.0, "--temp", "-t", help="Sampling temperature (0 = greedy)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass."),
    seed: Optional[int] = typer.Option(None, "--seed", help="PRNG seed for sampling."),
    raw: bool = typer.Option(False, "--raw", help="Send the prompt as-is, without the chat template."),
    repetition_penalty: float = RepetitionPenaltyOpt,
    no_repeat_ngram: int = NoRepeatNgramOpt,
    force: bool = ForceOpt,
) -> None:
    """Answer one prompt: the answer alone on stdout, statistics on stderr."""
    from iceburg_mlx.generation import GenerationStats, stream
    from iceburg_mlx.templates import chat_prompt, with_system
    from iceburg_mlx.sampling import SamplingParams

    if prompt == "-":
        prompt = sys.stdin.read()
    params = SamplingParams(temperature=temp, top_p=top_p, max_tokens=max_tokens, seed=seed,
                            repetition_penalty=repetition_penalty, no_repeat_ngram=no_repeat_ngram).validate()
    loaded = _load(model, adapter, force)
    system = _system(system, adapter)
    tok = loaded.tokenizer
    if raw:
        ids = list(tok.encode(prompt))
    else:
        ids = chat_prompt(tok, with_system([{"role": "user", "content": prompt}], system))
    stats = GenerationStats()
    for piece in stream(loaded.model, tok, ids, params, stats=stats):
        sys.stdout.write(piece.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    typer.echo(_stats_line(stats), err=True)


HELP = "/reset clears the conversation, /system TEXT sets the system prompt, /exit quits (Ctrl-D too)."


@app.command()
def chat(
    model: Optional[str] = ModelOpt,
    adapter: Optional[str] = AdapterOpt,
    system: Optional[str] = SystemOpt,
    max_tokens: int = typer.Option(512, "--max-tokens", "-n"),
    temp: float = typer.Option(0.0, "--temp", "-t"),
    top_p: float = typer.Option(1.0, "--top-p"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    stats: bool = typer.Option(False, "--stats", help="Print speed after each answer."),
    repetition_penalty: float = RepetitionPenaltyOpt,
    no_repeat_ngram: int = NoRepeatNgramOpt,
    force: bool = ForceOpt,
) -> None:
    """Multi-turn streaming chat; the KV cache is kept across turns."""
    from iceburg_mlx.chat import ChatSession
    from iceburg_mlx.sampling import SamplingParams

    params = SamplingParams(temperature=temp, top_p=top_p, max_tokens=max_tokens, seed=seed,
                            repetition_penalty=repetition_penalty, no_repeat_ngram=no_repeat_ngram).validate()
    loaded = _load(model, adapter, force)
    system = _system(system, adapter)
    if system and adapter:
        typer.echo("(system prompt from the adapter's recipe; --system to change)", err=True)
    session = ChatSession(loaded.model, loaded.tokenizer, system)
    interactive = sys.stdin.isatty()
    if interactive:
        typer.echo(f"chatting with {loaded.source.spec}" + (f" + {adapter}" if adapter else "") + f". {HELP}",
                   err=True)
    while True:
        try:
            line = input(">>> " if interactive else "")
        except EOFError:   # Ctrl-D or the end of piped input: a normal end
            typer.echo("", err=True)
            break
        except KeyboardInterrupt:  # Ctrl-C at the prompt: interrupted, as everywhere else
            typer.echo("", err=True)
            raise typer.Exit(130) from None
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit", "/bye"):
            break
        if text == "/reset":
            session.reset()
            typer.echo("(conversation cleared)", err=True)
            continue
        if text.startswith("/system"):
            session.set_system(text[len("/system"):].strip())
            typer.echo("(system prompt set; conversation cleared)", err=True)
            continue
        if text.startswith("/"):
            typer.echo(f"unknown command {text.split()[0]}. {HELP}", err=True)
            continue
        try:
            for piece in session.send(text, params):
                sys.stdout.write(piece.text)
                sys.stdout.flush()
        except KeyboardInterrupt:
            typer.echo(" [interrupted]", err=True)
        sys.stdout.write("\n")
        sys.stdout.flush()
        if stats and session.last_stats:
            typer.echo(_stats_line(session.last_stats), err=True)
