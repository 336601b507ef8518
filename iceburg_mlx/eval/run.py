"""One `eval` run from its options: which models, which items, which perplexity data, each model
loaded only while it is evaluated, and the record that the report is written from.

    sides = [side(model, adapter), side(against_model, against_adapter)]   # or resolve_against()
    record = run_eval(EvalRequest(...), progress=...)

An adapter is a registry name (`oracle`, `oracle@3`) or a directory; `--against` takes `base` (A's
model without the adapter), an adapter (name or directory, on A's model) or a model spec.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iceburg_mlx.errors import AdapterError, ConfigError
from iceburg_mlx.eval.bench import BenchItem, Progress, eval_params, load_items, select_benches


@dataclass(frozen=True)
class Side:
    spec: str | None          # model spec (None: the default model)
    adapter: str | None       # adapter registry name or directory
    label: str


def label_for(model: str | None, adapter: str | None) -> str:
    """A short name for a side: the adapter's registry name or directory name, else the model's."""
    if adapter:
        p = Path(adapter).expanduser()
        return p.resolve().name if p.exists() else adapter
    if not model:
        return "smollm2-135m-instruct"
    p = Path(model).expanduser()
    return p.stem if p.suffix == ".gguf" else (p.name if p.exists() else model)


def side(model: str | None, adapter: str | None) -> Side:
    return Side(model, adapter, label_for(model, adapter))


def _is_adapter(spec: str, adapters_dir) -> bool:
    from iceburg_mlx.adapters import resolve_adapter_path

    try:
        resolve_adapter_path(spec, adapters_dir)
    except AdapterError:
        return False
    return True


def resolve_against(against: str, model: str | None, adapter: str | None, adapters_dir=None) -> Side:
    """B from `--against`: 'base' = A's model without the adapter; an adapter (registry name or
    directory) = A's model with it; anything else = a model spec."""
    if against == "base":
        if not adapter:
            raise ConfigError("--against base needs --adapter (base = the model without it)")
        return Side(model, None, "base")
    if _is_adapter(against, adapters_dir):
        return Side(model, against, label_for(model, against))
    return Side(against, None, label_for(against, None))


def perplexity_conversations(items: dict[str, list[BenchItem]], data_dir: Path, ppl_data: Path | None,
                             n: int | None) -> tuple[list | None, str]:
    """(held-out conversations for perplexity, where they came from): `ppl_data` when given; the
    benches' reference answers when the items carry them (None: evaluate() takes them); else the
    benches' preference pairs (prompt + chosen answer), whose topics are disjoint from train."""
    from iceburg_mlx.eval.perplexity import load_conversations

    if ppl_data is not None:
        convs = load_conversations(ppl_data, n)
        if not convs:
            raise ConfigError(f"--ppl-data: {ppl_data} holds no conversation with an assistant turn")
        return convs, str(ppl_data)
    if any(it.reference for its in items.values() for it in its):
        return None, "bench reference answers"
    files = [data_dir / b / "prefs.jsonl" for b in items if (data_dir / b / "prefs.jsonl").is_file()]
    convs = [c for f in files for c in load_conversations(f, n)]
    return convs, (", ".join(f"{f} (chosen)" for f in files) if convs else "none")


def evaluate_side(s: Side, items, params, *, perplexity: bool, contamination: bool, conversations=None,
                  regression: Path | None = None, progress: Progress | None = None, force: bool = False):
    """(ModelEval, regression result or None) for one side; the model is freed before returning."""
    import mlx.core as mx

    from iceburg_mlx.eval.bench import evaluate
    from iceburg_mlx.adapters import load_with_adapter

    if progress:
        progress(f"loading {s.label}", 0, 0)
    loaded = load_with_adapter(s.spec, adapter=s.adapter, force=force)
    try:
        result = evaluate(loaded.model, loaded.tokenizer, items, params, label=s.label, perplexity=perplexity,
                          contamination=contamination, progress=progress, conversations=conversations)
        result.info = {"spec": loaded.source.spec, "adapter": s.adapter, "compute": loaded.compute,
                       "warnings": loaded.info.get("warnings", [])}
        reg = None
        if regression is not None:
            from iceburg_mlx.eval.compare import run_regression

            if progress:
                progress(f"{s.label}: regression set", 0, 0)
            reg = run_regression(loaded.model, loaded.tokenizer, regression, params)
    finally:
        del loaded
        gc.collect()
        mx.clear_cache()
    return result, reg


@dataclass(frozen=True)
class EvalRequest:
    a: Side
    b: Side | None = None
    bench: str = "all"
    n: int | None = None
    data_dir: Path = Path("data")
    seed: int = 0
    max_tokens: int = 256
    perplexity: bool = True
    contamination: bool = True
    ppl_data: Path | None = None
    regression: Path | None = None
    previous: Path | None = None      # an eval.json (or a directory holding one) to diff against
    repetition_penalty: float = 1.0   # the decoding's repetition controls (recorded in eval.json)
    no_repeat_ngram: int = 0
    force: bool = False               # adapters trained on another base: a warning, not an error


def run_eval(req: EvalRequest, progress: Progress | None = None) -> dict[str, Any]:
    """Evaluate A (and B, paired), and build the record `report.write_report` writes."""
    from iceburg_mlx.eval.compare import compare, diff_evals
    from iceburg_mlx.eval.report import build_record, read_eval_json

    if req.n is not None and req.n < 1:
        raise ConfigError(f"--n: must be >= 1, got {req.n}")
    params = eval_params(req.seed, req.max_tokens, req.repetition_penalty, req.no_repeat_ngram)
    items = {b: load_items(b, req.data_dir, req.n) for b in select_benches(req.bench, req.data_dir)}
    prev = read_eval_json(req.previous) if req.previous is not None else None
    if req.previous is not None and prev is None:
        raise ConfigError(f"--previous: {req.previous} holds no eval.json")
    convs, source = (perplexity_conversations(items, req.data_dir, req.ppl_data, req.n) if req.perplexity
                     else (None, None))
    kw: dict[str, Any] = dict(perplexity=req.perplexity, contamination=req.contamination, conversations=convs,
                              progress=progress, force=req.force)
    a, reg = evaluate_side(req.a, items, params, regression=req.regression, **kw)
    b, comparisons = None, []
    if req.b is not None:
        b, _ = evaluate_side(req.b, items, params, **kw)
        comparisons = compare(a, b)
    settings = {"seed": req.seed, "max_tokens": req.max_tokens, "n": req.n, "bench": req.bench,
                "data_dir": str(req.data_dir), "temperature": 0.0, "perplexity_on": source,
                "repetition_penalty": params.repetition_penalty, "repetition_window": params.repetition_window,
                "no_repeat_ngram": params.no_repeat_ngram}
    changes = diff_evals(prev, build_record(a)) if prev is not None else None
    return build_record(a, b, comparisons, settings, changes, reg)


__all__ = ["EvalRequest", "Side", "evaluate_side", "label_for", "perplexity_conversations", "resolve_against",
           "run_eval", "side"]
