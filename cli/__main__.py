from iceburg_mlx.cli.main import run

run()
