"""The thin Typer front end (installed as `iceburg_mlx.cli`). Only this package prints and exits."""
