"""Training methods by name (`method.name` in a recipe). Adding one is a module here plus one line
below (or `register(...)` from your own code): see `base.Method`."""

from iceburg_mlx.train.methods.base import METHODS, Method, MethodData, RunContext, get_method, register, steps_for
from iceburg_mlx.train.methods.dpo import DPO
from iceburg_mlx.train.methods.sft import SFT

register(SFT())
register(DPO())

__all__ = ["METHODS", "Method", "MethodData", "RunContext", "get_method", "register", "steps_for"]
