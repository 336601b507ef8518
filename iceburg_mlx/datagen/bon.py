"""Best-of-N preference pairs sampled from a model (an adapter on its base):

    pairs, report = sample_pairs(BonRequest(prompts=Path("prompts.jsonl"), adapter="oracle", n=4))

Each prompt gets N sampled answers under the adapter; the role's quality rule scores them; the best
and the worst become a pair when their scores differ by at least `min_margin`, plus perturbed
copies of the best as hard negatives (`data.bon`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from iceburg_mlx.adapters import files as adapter_files
from iceburg_mlx.adapters import load_with_adapter, resolve_adapter_path
from iceburg_mlx.data.bon import PERTURBATIONS, BonReport, best_of_n_pairs
from iceburg_mlx.data.formats import split_prompt
from iceburg_mlx.data.io import iter_jsonl
from iceburg_mlx.data.score import ROLE_RULES
from iceburg_mlx.errors import DataError
from iceburg_mlx.generation import sampler


@dataclass(frozen=True)
class BonRequest:
    prompts: Path                   # JSONL: messages ending in a user turn, or prompt records
    n: int = 4
    adapter: str | None = None      # registry name or directory
    model: str | None = None        # default: the adapter's base, else the default model
    role: str | None = None         # scorer rule; default: the adapter's role
    min_margin: float = 0.1
    temperature: float = 0.8
    max_tokens: int = 256
    seed: int = 0
    hard_negatives: bool = True


def read_prompts(path: Path) -> list[list[dict]]:
    """The prompt messages of each record (DataError naming file:line)."""
    out = []
    for line, rec in iter_jsonl(path):
        try:
            out.append(split_prompt(rec)[0])
        except DataError as e:
            raise DataError(f"{path}:{line}: {e}") from None
    return out


def sample_pairs(req: BonRequest, on_prompt: Callable[[int, int], None] | None = None,
                 on_start: Callable[[str], None] | None = None) -> tuple[list[dict], BonReport]:
    msgs = read_prompts(req.prompts)
    base, role, adapter = req.model, req.role, None
    if req.adapter:
        path = resolve_adapter_path(req.adapter)
        adapter = str(path)
        base = base or adapter_files.trained_on(path)
        recorded = adapter_files.recipe_role(path).get("name") or adapter_files.read_json(
            path / adapter_files.CONFIG_FILE).get("role")
        role = role or (recorded if recorded in ROLE_RULES else None)
    loaded = load_with_adapter(base, adapter)
    if on_start:
        on_start(f"sampling {req.n} answers for each of {len(msgs)} prompts (temperature {req.temperature}, "
                 f"role {role or 'none'})")
    return best_of_n_pairs(msgs, sampler(loaded.model, loaded.tokenizer, temperature=req.temperature,
                                         max_tokens=req.max_tokens),
                           role=role, n=req.n, min_margin=req.min_margin,
                           hard_negatives=tuple(PERTURBATIONS) if req.hard_negatives else (), seed=req.seed,
                           on_prompt=on_prompt)
