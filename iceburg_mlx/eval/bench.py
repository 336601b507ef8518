"""Running benches: load items, generate seeded greedy answers through `generate_many`, check them.

A bench is `<data_dir>/<bench>/eval.jsonl`: one record per item in any format `to_messages`
reads (ChatML usually), with an `expect` dict for the bench's checker (see `checkers`) and an
optional `id`. The prompt is the conversation up to its last user turn; an assistant answer
after it, if the record has one, is the known-good reference, scored for perplexity.

`evaluate()` runs several benches on one model, plus the held-out perplexity and the
chat-template contamination probe, and returns a `ModelEval` (JSON-able with `to_dict`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceburg_mlx.errors import ConfigError, DataError
from iceburg_mlx.eval import stats
from iceburg_mlx.eval.checkers import (
    SENTINEL_PROMPTS,
    TEMPLATE_MARKERS,
    check_contamination,
    get_checker,
)
from iceburg_mlx.sampling import SamplingParams

BENCHES = ("oracle", "surveyor", "dissident", "synthesist", "general")
EVAL_FILE = "eval.jsonl"
Progress = Callable[[str, int, int], None]   # (stage, done, total)


@dataclass
class BenchItem:
    id: str
    bench: str
    prompt: list[dict[str, Any]]          # the messages the model answers
    expect: dict[str, Any]
    reference: str | None = None          # a known-good answer, if the record has one

    def conversation(self) -> list[dict[str, Any]] | None:
        if self.reference is None:
            return None
        return [*self.prompt, {"role": "assistant", "content": self.reference}]


def bench_role(bench: str) -> str:
    """The checker a bench uses: `oracle` and `oracle:v1` (a second item set) both use oracle's."""
    return bench.partition(":")[0]


def bench_path(bench: str, data_dir: str | Path) -> Path:
    """`<data_dir>/<role>/eval.jsonl`, or `eval-<set>.jsonl` for a bench named `<role>:<set>`."""
    role, _, item_set = bench.partition(":")
    return Path(data_dir) / role / (f"eval-{item_set}.jsonl" if item_set else EVAL_FILE)


def select_benches(spec: str | Sequence[str], data_dir: str | Path) -> list[str]:
    """'all' -> every bench with an eval file under `data_dir`; else the named ones (checked; a
    string may list several, comma-separated, e.g. "oracle,oracle:v1")."""
    names = [n.strip() for n in spec.split(",") if n.strip()] if isinstance(spec, str) else list(spec)
    if names == ["all"]:
        found = [b for b in BENCHES if bench_path(b, data_dir).is_file()]
        if not found:
            raise DataError(f"{data_dir}: no <bench>/{EVAL_FILE} for any of {', '.join(BENCHES)}")
        return found
    for b in names:
        get_checker(bench_role(b))
    return names


def item_from_record(rec: dict[str, Any], bench: str, default_id: str) -> BenchItem:
    """One bench item from a record; DataError(reason) if it has no prompt."""
    from iceburg_mlx.data.formats import split_prompt

    prompt, ref = split_prompt(rec)
    expect = rec.get("expect") or {}
    if not isinstance(expect, dict):
        raise DataError(f"'expect' is not an object (got {type(expect).__name__})")
    return BenchItem(str(rec.get("id", default_id)), bench, prompt, expect, ref)


def load_items(bench: str, data_dir: str | Path, n: int | None = None) -> list[BenchItem]:
    """The first `n` items (all when None) of `<data_dir>/<bench>/eval.jsonl`."""
    from iceburg_mlx.data.io import iter_jsonl

    path = bench_path(bench, data_dir)
    if not path.is_file():
        raise DataError(f"{path}: no such bench file")
    items: list[BenchItem] = []
    for line, rec in iter_jsonl(path):
        if n is not None and len(items) >= n:
            break
        try:
            items.append(item_from_record(rec, bench, f"{bench}-{line}"))
        except DataError as e:
            raise DataError(f"{path}:{line}: {e}") from None
    if not items:
        raise DataError(f"{path}: no items")
    return items


@dataclass
class ItemResult:
    id: str
    answer: str
    passed: bool
    score: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "passed": self.passed, "score": round(self.score, 4), "answer": self.answer,
                "details": self.details}


@dataclass
class BenchResult:
    bench: str
    items: list[ItemResult]

    @property
    def n(self) -> int:
        return len(self.items)

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.items)

    @property
    def accuracy(self) -> float:
        return self.passed / self.n if self.n else 0.0

    def outcomes(self) -> dict[str, bool]:
        return {r.id: r.passed for r in self.items}

    def calibration(self) -> dict[str, Any] | None:
        """ECE and Brier over items with a stated confidence (oracle), else None."""
        pairs = [(r.details["confidence"], r.passed) for r in self.items if r.details.get("confidence") is not None]
        if not pairs:
            return None
        conf, ok = [c for c, _ in pairs], [o for _, o in pairs]
        return {"n": len(pairs), "ece": round(stats.expected_calibration_error(conf, ok), 4),
                "brier": round(stats.brier_score(conf, ok), 4),
                "mean_confidence": round(sum(conf) / len(conf), 4)}

    def summary(self) -> dict[str, Any]:
        lo, hi = stats.wilson_interval(self.passed, self.n)
        out = {"n": self.n, "passed": self.passed, "accuracy": round(self.accuracy, 4),
               "ci95": [round(lo, 4), round(hi, 4)],
               "mean_score": round(sum(r.score for r in self.items) / self.n, 4) if self.n else 0.0}
        cal = self.calibration()
        if cal:
            out["calibration"] = cal
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "items": [r.to_dict() for r in self.items]}


def eval_params(seed: int = 0, max_tokens: int = 256, repetition_penalty: float = 1.0,
                no_repeat_ngram: int = 0) -> SamplingParams:
    """Seeded greedy decoding: the same model gives the same answers run after run."""
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=seed, repetition_penalty=repetition_penalty,
                          no_repeat_ngram=no_repeat_ngram).validate()


def run_bench(model, tokenizer, items: Sequence[BenchItem], params: SamplingParams,
              on_done: Callable[[int], None] | None = None) -> BenchResult:
    """Answer every item (one `generate_many` call) and check each answer with the bench's checker;
    `on_done(n)` as each answer finishes."""
    from iceburg_mlx.generation import generate_many
    from iceburg_mlx.templates import chat_prompt

    if not items:
        raise ConfigError("run_bench needs at least one item")
    bench = items[0].bench
    checker = get_checker(bench_role(bench))
    gens = generate_many(model, tokenizer, [chat_prompt(tokenizer, it.prompt) for it in items], params,
                         on_done=on_done)
    results = []
    for it, g in zip(items, gens):
        r = checker(g.text, it.expect)
        results.append(ItemResult(it.id, g.text, r.passed, r.score, r.details))
    return BenchResult(bench, results)


def _marker_token_ids(tokenizer) -> set[int]:
    """Ids of template markers that are single tokens of this vocabulary."""
    ids = set()
    for m in TEMPLATE_MARKERS:
        try:
            enc = tokenizer.encode(m, add_special_tokens=False)
        except TypeError:
            enc = tokenizer.encode(m)
        if len(enc) == 1:
            ids.add(int(enc[0]))
    return ids


def contamination_probe(model, tokenizer, params: SamplingParams, mode: str | None = None) -> dict[str, Any]:
    """Run the sentinel prompts and check the answers for raw chat-template markers.

    mode "chat" (default when the tokenizer has a chat template): prompts go through the template
    and answers must not contain markers. mode "completion" (default otherwise): raw text in, and
    a base model must neither print markers or role lines nor emit a marker token.
    """
    from iceburg_mlx.generation import generate_many
    from iceburg_mlx.templates import chat_prompt

    mode = mode or ("chat" if getattr(tokenizer, "chat_template", None) else "completion")
    if mode not in SENTINEL_PROMPTS:
        raise ConfigError(f"contamination mode must be chat or completion, got {mode!r}")
    prompts = SENTINEL_PROMPTS[mode]
    if mode == "chat":
        ids = [chat_prompt(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    else:
        ids = [list(tokenizer.encode(p)) for p in prompts]
    gens = generate_many(model, tokenizer, ids, params)
    marker_ids = _marker_token_ids(tokenizer) if mode == "completion" else set()
    failures = []
    for p, g in zip(prompts, gens):
        r = check_contamination(g.text, {"mode": mode})
        bad_tokens = sorted(marker_ids & set(g.tokens))
        if not r.passed or bad_tokens:
            failures.append({"prompt": p, "answer": g.text[:200], **r.details, "marker_tokens": bad_tokens})
    return {"mode": mode, "n": len(prompts), "passed": not failures, "failures": failures}


@dataclass
class ModelEval:
    label: str
    benches: dict[str, BenchResult]
    perplexity: Any = None                 # PerplexityResult or None
    contamination: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, **self.info,
                "benches": {b: r.to_dict() for b, r in self.benches.items()},
                "perplexity": self.perplexity.to_dict() if self.perplexity is not None else None,
                "contamination": self.contamination}


def evaluate(model, tokenizer, items: dict[str, list[BenchItem]], params: SamplingParams, label: str = "model",
             perplexity: bool = True, contamination: bool = True, progress: Progress | None = None,
             conversations: Sequence[list[dict[str, Any]]] | None = None) -> ModelEval:
    """Run each bench, then perplexity, then the contamination probe.

    Perplexity is taken on `conversations` (held-out chats) when given, else on the items'
    reference answers; it is skipped when there are none. `progress(stage, done, total)` counts
    answered items, plus one unit each for perplexity and the probe.
    """
    from iceburg_mlx.eval.perplexity import perplexity as ppl

    total = sum(len(its) for its in items.values()) + int(perplexity) + int(contamination)
    done = 0

    def step(stage: str, at: int | None = None) -> None:
        if progress is not None:
            progress(stage, done if at is None else at, total)

    results = {}
    for bench, its in items.items():
        stage = f"{label}: {bench}"
        step(stage)
        results[bench] = run_bench(model, tokenizer, its, params,
                                   on_done=lambda k, s=stage, d=done: step(s, d + k))
        done += len(its)
    out = ModelEval(label, results)
    convs = list(conversations) if conversations is not None else [
        c for its in items.values() for c in (it.conversation() for it in its) if c is not None]
    if perplexity and convs:
        step(f"{label}: perplexity ({len(convs)} conversations)")
        out.perplexity = ppl(model, tokenizer, convs)
        done += 1
    if contamination:
        step(f"{label}: contamination probe")
        out.contamination = contamination_probe(model, tokenizer, params)
    return out
