"""Driver for the data-parallel test: trains the tiny model; rank 0 writes the loss curve as JSON.

    python tests/dist_train.py BASE_GGUF DATA_JSONL OUT_JSON RUNS_DIR   (alone, or under mlx.launch)
"""

import json
import sys

import iceburg_mlx  # noqa: F401
from iceburg_mlx.train.config import recipe_from_dict
from iceburg_mlx.train.run import TrainOptions, train_from_recipe

base, data, out, runs = sys.argv[1:5]
recipe = recipe_from_dict({
    "model": {"base": base}, "role": {"name": "dist"}, "data": {"train": data, "max_seq_len": 256},
    "lora": {"rank": 4, "alpha": 8}, "optim": {"lr": 1e-2}, "schedule": {"warmup": 0, "kind": "constant"},
    "train": {"steps": 4, "batch_size": 4}, "eval": {"every": 0}, "save": {"every": 0}, "seed": 5})
res = train_from_recipe(recipe, TrainOptions(runs_dir=runs, publish=False))
import mlx.core as mx  # noqa: E402

group = mx.distributed.init()
if group.rank() == 0:
    json.dump({"world": group.size(), "losses": [m["train_loss"] for m in res.metrics if "train_loss" in m]},
              open(out, "w"))
