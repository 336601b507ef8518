"""`iceburg-mlx train RECIPE` and `iceburg-mlx recipes list|show`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from iceburg_mlx.cli.app import app

SetOpt = typer.Option(None, "--set", help="Override a recipe key: section.key=value (repeatable).")


@app.command()
def train(
    recipe: Optional[str] = typer.Argument(None, help="Recipe file or name in recipes/ (e.g. recipes/oracle.yaml, oracle); with --resume, the run's own recipe by default."),
    set_: Optional[List[str]] = SetOpt,
    adapters_dir: Optional[Path] = typer.Option(None, "--adapters-dir", help="Registry root (default: ./adapters)."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where run directories go."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this run directory exactly."),
    hosts: Optional[Path] = typer.Option(None, "--hosts", help="hosts.json: data-parallel over these machines (mlx.launch)."),
) -> None:
    """Train a LoRA/DoRA adapter from a recipe and register it as <role>/<version>."""
    if hosts is not None:
        _launch(hosts, sys.argv[1:])
        return
    from iceburg_mlx.cli import ui
    from iceburg_mlx.errors import ConfigError
    from iceburg_mlx.train.config import read_recipe
    from iceburg_mlx.train.run import TrainOptions, train_from_recipe

    if recipe is None:
        if resume is None:
            raise ConfigError("give a recipe (e.g. recipes/oracle.yaml), or --resume RUN_DIR")
        recipe = str(resume / "recipe.yaml")
    err = ui.console(stderr=True)
    rec, path = read_recipe(recipe, list(set_ or []))
    rank0 = _rank() == 0
    progress = ui.progress(err, "steps", disable=not rank0)
    task = progress.add_task(rec.role.name or "train", total=rec.train.steps or None, stats="")

    def on_step(info):
        shown = "".join(f" {k} {v:.3g}" for k, v in list(info.extra.items())[:4])  # the method's own metrics
        rate = (f"({info.count_per_sec:.0f} trained)" if info.unit == "tokens"
                else f"{info.count_per_sec:.2f} {info.unit}/s")
        progress.update(task, completed=info.step, total=info.total_steps or None, stats=(
            f"loss {info.loss:.4f}{shown} lr {info.lr:.2e} {info.tokens_per_sec:.0f} tok/s "
            f"{rate} peak {info.peak_memory_bytes / 2**20:.0f} MiB"))

    def on_eval(step, v):
        progress.console.print(f"step {step}: validation loss {v:.4f}")

    prep: dict = {}

    def on_progress(stage, done, total):  # preparation work before the first step (DPO's reference pass)
        if stage not in prep:
            prep[stage] = progress.add_task(stage, total=total, stats="")
        progress.update(prep[stage], completed=done, total=total)

    opts = TrainOptions(adapters_dir=adapters_dir, runs_dir=runs_dir, resume=resume, recipe_path=path,
                        on_step=on_step, on_eval=on_eval, on_progress=on_progress,
                        on_event=(lambda m: progress.console.print(m)) if rank0 else None)
    with progress:
        res = train_from_recipe(rec, opts)
    if rank0:
        err.print(f"run: {res.run_dir}")
        typer.echo(f"trained {res.steps} steps, final loss {res.final_loss:.4f}"
                   + (f", best validation loss {res.best_val:.4f}" if res.best_val is not None else "")
                   + (f"; registered {res.registry_name} at {res.adapter_dir}" if res.registry_name else ""))


def _rank() -> int:
    import os

    return int(os.environ.get("MLX_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))


def _launch(hosts: Path, argv: list[str]) -> None:
    """Re-run this command under `mlx.launch` over the hosts in hosts.json (ring backend)."""
    import os
    import shutil

    from iceburg_mlx.errors import ConfigError

    if not hosts.is_file():
        raise ConfigError(f"--hosts {hosts}: file not found")
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--hosts":
            skip = True
            continue
        if a.startswith("--hosts="):
            continue
        args.append(a)
    launcher = shutil.which("mlx.launch")
    cmd = ([launcher] if launcher else [sys.executable, "-m", "mlx.launch"]) + [
        "--hostfile", str(hosts), "--backend", "ring", "--python", sys.executable, "--", "-m", "iceburg_mlx.cli", *args]
    os.execvp(cmd[0], cmd)


recipes_app = typer.Typer(help="List and show training recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")


@recipes_app.command("list")
def recipes_list(recipes_dir: Path = typer.Option(Path("recipes"), "--recipes-dir")) -> None:
    """The recipes in recipes/ with their role, method, base model and LoRA shape."""
    from rich.console import Console
    from rich.table import Table

    from iceburg_mlx.train.config import load_recipe

    t = Table(title=f"recipes in {recipes_dir}")
    for c in ("name", "role", "method", "base", "lora", "steps", "data"):
        t.add_column(c)
    for p in sorted(recipes_dir.glob("*.yaml")):
        r = load_recipe(str(p))
        t.add_row(p.stem, r.role.name or "-", r.method.name, r.model.base,
                  f"{'DoRA' if r.lora.dora else 'LoRA'} r{r.lora.rank}/a{r.lora.alpha:g}",
                  str(r.train.steps if r.train.steps is not None else f"{r.train.epochs} ep"), r.data.train or "-")
    Console().print(t)


@recipes_app.command("show")
def recipes_show(name: str = typer.Argument(...), set_: Optional[List[str]] = SetOpt) -> None:
    """The fully resolved recipe (defaults < extends < recipe < --set) as YAML."""
    from iceburg_mlx.train.config import dump_recipe, load_recipe

    typer.echo(dump_recipe(load_recipe(name, list(set_ or []))))
