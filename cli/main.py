"""`iceburg-mlx`: the entry point. The command modules register on `cli.app.app` when imported
(below); they import heavy libraries lazily, inside each command."""

from __future__ import annotations

import os
import sys

import typer

# each command module registers its commands on `app` when imported
from iceburg_mlx.cli import adapters as _adapters  # noqa: F401
from iceburg_mlx.cli import data as _data  # noqa: F401
from iceburg_mlx.cli import doctor as _doctor  # noqa: F401
from iceburg_mlx.cli import eval as _eval  # noqa: F401
from iceburg_mlx.cli import fuse as _fuse  # noqa: F401
from iceburg_mlx.cli import generate as _generate  # noqa: F401
from iceburg_mlx.cli import models as _models  # noqa: F401
from iceburg_mlx.cli import review as _review  # noqa: F401
from iceburg_mlx.cli import serve as _serve  # noqa: F401
from iceburg_mlx.cli import train as _train  # noqa: F401
from iceburg_mlx.cli.app import PROG, app


def reexec_argv(args: list[str]) -> list[str]:
    """The command line that re-runs this program with `args`: the same interpreter and the same
    `iceburg_mlx` package as this process (its directory first on sys.path), never whatever
    `iceburg_mlx/` the working directory holds (`python -m` would put the working directory first)."""
    import iceburg_mlx

    root = os.path.dirname(os.path.dirname(os.path.abspath(iceburg_mlx.__file__)))
    code = (f"import sys; sys.path[0] = {root!r}; sys.argv[0] = {PROG!r}; "
            "from iceburg_mlx.cli.main import run; run()")
    return [sys.executable, "-c", code, *args]


def _reexec_with_malloc_tuning() -> None:
    """glibc malloc settings only apply at process start: re-exec once with them set."""
    if os.environ.get("_ICEBURG_MLX_REEXEC") == "1":
        return
    from iceburg_mlx import _platform

    env = _platform.malloc_env()
    if env is None or not sys.argv or "--help" in sys.argv[1:2] or len(sys.argv) == 1:
        return
    env["_ICEBURG_MLX_REEXEC"] = "1"
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, reexec_argv(sys.argv[1:]), env)
    except OSError:
        return


def main(argv: list[str] | None = None) -> int:
    """Run one command line and return its exit code: typed library errors become one line on
    stderr and their exit code (2), usage errors click's message and 2, Ctrl-C 130."""
    from iceburg_mlx.errors import IceburgError

    try:
        rv = app(args=argv, prog_name=PROG, standalone_mode=False)
    except IceburgError as e:
        typer.echo(f"error: {e}", err=True)
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.TyperException as e:  # click's usage errors (typer vendors click): its message, exit 2
        e.show()
        return getattr(e, "exit_code", 2)
    return rv if isinstance(rv, int) else 0


def run() -> None:
    """Console-script entry."""
    _reexec_with_malloc_tuning()
    sys.exit(main())
