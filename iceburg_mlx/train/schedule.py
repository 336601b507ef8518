"""Learning-rate schedules and optimizers from a recipe, built from MLX's own schedule functions."""

from __future__ import annotations

from iceburg_mlx.errors import ConfigError


def make_schedule(kind: str, lr: float, total_steps: int, warmup: int = 0, min_lr: float = 0.0):
    """A callable step -> lr: linear warm-up over `warmup` steps, then cosine / linear decay to
    min_lr, or constant. The optimizer calls it with 0 for its first update, so warm-up runs
    lr * (step + 1) / warmup: the first step already trains (lr / warmup), step `warmup` - 1
    reaches lr, and the decay starts at step `warmup`."""
    import mlx.optimizers as optim

    warmup = max(0, min(int(warmup), total_steps))
    rest = max(1, total_steps - warmup)
    if kind == "cosine":
        main = optim.cosine_decay(lr, rest, end=min_lr)
    elif kind == "linear":
        main = optim.linear_schedule(lr, min_lr, rest)
    elif kind == "constant":
        import mlx.core as mx

        def main(step):
            return mx.array(lr, dtype=mx.float32)
    else:
        raise ConfigError(f"schedule.kind '{kind}' is not one of cosine, linear, constant")
    if warmup == 0:
        return main
    return optim.join_schedules([optim.linear_schedule(lr / warmup, lr, max(1, warmup - 1)), main], [warmup])


def make_optimizer(name: str, schedule, weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
    import mlx.optimizers as optim

    b = list(betas)
    if name == "adamw":
        return optim.AdamW(learning_rate=schedule, betas=b, eps=eps, weight_decay=weight_decay)
    if name == "adam":
        return optim.Adam(learning_rate=schedule, betas=b, eps=eps)
    if name == "sgd":
        return optim.SGD(learning_rate=schedule, weight_decay=weight_decay)
    raise ConfigError(f"optim.name '{name}' is not one of adamw, adam, sgd")
