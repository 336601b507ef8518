"""The Typer application object; each command module registers its commands on it, and
`cli.main` imports them all (so this module imports none of them: no cycle)."""

import typer

PROG = "iceburg-mlx"

app = typer.Typer(
    name=PROG,
    help="Fine-tune, evaluate, serve and export ICEBURG role models with MLX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
