"""`iceburg-mlx serve` (OpenAI-compatible API over one base + role adapters) and `iceburg-mlx router train`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from iceburg_mlx.cli.app import app

router_app = typer.Typer(help="The iceburg-auto router that picks a role for each request.", no_args_is_help=True)
app.add_typer(router_app, name="router")

DirOpt = typer.Option(None, "--adapters-dir", help="Registry directory (default: $ICEBURG_MLX_ADAPTERS or ./adapters).")


@app.command()
def serve(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model: name, path, Hub repo id or Ollama tag (default: smollm2-135m-instruct)."),
    adapters: Optional[str] = typer.Option(None, "--adapters", help="Comma-separated registry names to serve (role or role@N), e.g. surveyor,dissident,synthesist,oracle."),
    all_roles: bool = typer.Option(False, "--all", help="Serve every role in the registry (its newest version); the default when --adapters is not given."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8080, "--port", "-p", help="TCP port."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Name of an environment variable holding the API key; then every route but /health needs 'Authorization: Bearer <key>'."),
    adapters_dir: Optional[Path] = DirOpt,
    max_batch: int = typer.Option(32, "--max-batch", help="Most requests decoded together."),
    max_tokens: int = typer.Option(2048, "--max-tokens-limit", help="Largest max_tokens a request may ask for."),
    max_body: int = typer.Option(1 << 20, "--max-body-bytes", help="Largest request body."),
    no_router: bool = typer.Option(False, "--no-router", help="Do not offer iceburg-auto even if a router is trained."),
    role_prompts: bool = typer.Option(True, "--role-prompts/--no-role-prompts", help="A chat request to iceburg-<role> with no system message gets the system prompt the adapter was trained with."),
    force: bool = typer.Option(False, "--force", help="Serve adapters trained on another base (a warning instead of an error)."),
) -> None:
    """Serve an OpenAI-compatible API: one base in memory, each role's adapter side by side, batched decoding."""
    import logging

    from iceburg_mlx.errors import ConfigError
    from iceburg_mlx.serve.protocol import Limits
    from iceburg_mlx.serve.runner import bind, is_loopback, serve_forever
    from iceburg_mlx.serve.state import load_state

    if adapters and all_roles:
        raise ConfigError("give --adapters or --all, not both")
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env {api_key_env}: that environment variable is not set or empty")
    if not is_loopback(host) and not api_key:
        typer.echo(f"warning: binding {host} without --api-key-env: anyone who can reach it can use the model",
                   err=True)
    if min(max_batch, max_tokens, max_body) < 1:
        raise ConfigError("--max-batch, --max-tokens-limit and --max-body-bytes must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = [a for a in adapters.split(",") if a.strip()] if adapters else None
    limits = Limits(max_body_bytes=max_body, max_tokens=max_tokens,
                    default_max_tokens=min(256, max_tokens))
    sock = bind(host, port)  # a port in use fails now, not after the model load
    state = load_state(model, names, adapters_dir, limits, api_key, max_batch=max_batch, use_router=not no_router,
                       force=force, role_prompts=role_prompts)
    ids = [c["id"] for c in state.model_cards()]
    typer.echo(f"serving on http://{host}:{port}/v1 : {', '.join(ids)}", err=True)
    if state.router is not None:
        served = state.router_roles()
        acc = state.router.accuracy_among(served)
        typer.echo(f"iceburg-auto routes among {', '.join(served)}"
                   + (f" (held-out accuracy among them {acc:.0%})" if acc is not None
                      else " (no held-out accuracy recorded for these roles: retrain with `router train`)"),
                   err=True)
    serve_forever(state, sock)


@router_app.command("train")
def router_train(
    data_dir: Path = typer.Option(Path("data"), "--data-dir", help="Directory with <role>/train.jsonl files."),
    roles: Optional[str] = typer.Option(None, "--roles", help="Comma-separated roles (default: every <role>/ with a train.jsonl)."),
    adapters_dir: Optional[Path] = DirOpt,
    holdout: float = typer.Option(0.2, "--holdout", help="Fraction held out per role to measure accuracy."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train the iceburg-auto router on the roles' user turns; save router.json/.npz in the adapters dir."""
    from iceburg_mlx.errors import ConfigError
    from iceburg_mlx.serve.router import train_router
    from iceburg_mlx.adapters.registry import adapters_root

    if not 0 <= holdout < 1:
        raise ConfigError(f"--holdout must be in [0, 1), got {holdout}")
    names = [r.strip() for r in roles.split(",") if r.strip()] if roles else None
    router = train_router(data_dir, names, holdout=holdout, seed=seed)
    path = router.save(adapters_root(adapters_dir))
    info = router.info
    acc = info.get("heldout_accuracy")
    counts = ", ".join(f"{r} {n}" for r, n in info["per_role"].items())
    typer.echo(f"router over {len(router.roles)} roles ({counts} prompts)")
    if acc is not None:
        typer.echo(f"held-out accuracy {acc:.1%} on {info['heldout_examples']} prompts")
    typer.echo(str(path))
