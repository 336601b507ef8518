"""Paired A/B comparison, diffs against a stored eval, and regression sets.

- `compare(a, b)`: model A and model B answered the same items of each bench. Per bench:
  accuracy with a Wilson 95% interval for each, the exact McNemar p on the discordant pairs,
  BH-adjusted across the benches compared, Cohen's h, and one verdict line:
  ``oracle@3 vs base on oracle: 71% [62-79] vs 48% [39-57], McNemar p=0.003 (BH 0.009), h=0.47``.
- `diff_evals(previous, current)`: two eval records (`report.build_record`) of one model: items
  whose check used to pass and now fails ("regressed"), the reverse ("fixed"), and answers that
  changed beyond a similarity threshold ("drifted"; greedy decoding is seeded, so a same-model
  rerun reproduces its answers).
- `run_regression(model, tokenizer, path, params)`: a JSONL of prompts with known-good answers
  and/or checks: {"id", "messages" | "prompt", "answer"?, "bench"?, "expect"?}. Flags a failed
  check and an answer that drifted from the known-good one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from iceburg_mlx.errors import DataError
from iceburg_mlx.eval import stats
from iceburg_mlx.eval.bench import BenchResult, ModelEval
from iceburg_mlx.sampling import SamplingParams

DRIFT_THRESHOLD = 0.8   # answers less similar than this (difflib ratio) count as drifted


@dataclass
class BenchComparison:
    bench: str
    label_a: str
    label_b: str
    counts: stats.PairedCounts
    p: float
    p_bh: float = 1.0

    @property
    def n(self) -> int:
        return self.counts.n

    @property
    def acc_a(self) -> float:
        return (self.counts.both + self.counts.only_a) / self.n if self.n else 0.0

    @property
    def acc_b(self) -> float:
        return (self.counts.both + self.counts.only_b) / self.n if self.n else 0.0

    @property
    def ci_a(self) -> tuple[float, float]:
        return stats.wilson_interval(self.counts.both + self.counts.only_a, self.n)

    @property
    def ci_b(self) -> tuple[float, float]:
        return stats.wilson_interval(self.counts.both + self.counts.only_b, self.n)

    @property
    def h(self) -> float:
        return stats.cohens_h(self.acc_a, self.acc_b)

    def verdict(self) -> str:
        return (f"{self.label_a} vs {self.label_b} on {self.bench}: {_pct_ci(self.acc_a, self.ci_a)} vs "
                f"{_pct_ci(self.acc_b, self.ci_b)}, McNemar {_p('p', self.p)} ({_p('BH', self.p_bh)}), "
                f"h={self.h:.2f}")

    def to_dict(self) -> dict[str, Any]:
        c = self.counts
        return {"bench": self.bench, "n": self.n, "a": self.label_a, "b": self.label_b,
                "accuracy_a": round(self.acc_a, 4), "ci95_a": [round(x, 4) for x in self.ci_a],
                "accuracy_b": round(self.acc_b, 4), "ci95_b": [round(x, 4) for x in self.ci_b],
                "both": c.both, "only_a": c.only_a, "only_b": c.only_b, "neither": c.neither,
                "mcnemar_p": self.p, "bh_p": self.p_bh, "cohens_h": round(self.h, 4), "verdict": self.verdict()}


def _pct_ci(acc: float, ci: tuple[float, float]) -> str:
    return f"{round(100 * acc)}% [{round(100 * ci[0])}-{round(100 * ci[1])}]"


def _p(name: str, p: float) -> str:
    """p=0.003 / p<0.001 for the test, "BH 0.009" / "BH <0.001" for the adjusted value."""
    eq, lt = ("=", "<") if name == "p" else (" ", " <")
    return f"{name}{lt}0.001" if p < 0.001 else f"{name}{eq}{p:.3f}"


def _results(x: ModelEval | Mapping[str, BenchResult]) -> Mapping[str, BenchResult]:
    return x.benches if isinstance(x, ModelEval) else x


def compare_bench(a: BenchResult, b: BenchResult, label_a: str, label_b: str) -> BenchComparison:
    """Pair the two results by item id; DataError if they did not answer the same items."""
    oa, ob = a.outcomes(), b.outcomes()
    if set(oa) != set(ob):
        only = sorted(set(oa) ^ set(ob))[:3]
        raise DataError(f"bench {a.bench}: A and B answered different items (e.g. {', '.join(only)})")
    ids = list(oa)
    counts = stats.paired_counts([oa[i] for i in ids], [ob[i] for i in ids])
    return BenchComparison(a.bench, label_a, label_b, counts, stats.mcnemar_exact(counts.only_a, counts.only_b))


def compare(a: ModelEval | Mapping[str, BenchResult], b: ModelEval | Mapping[str, BenchResult],
            label_a: str | None = None, label_b: str | None = None) -> list[BenchComparison]:
    """Per-bench paired comparisons over the benches both ran, BH-adjusted across them."""
    label_a = label_a or (a.label if isinstance(a, ModelEval) else "A")
    label_b = label_b or (b.label if isinstance(b, ModelEval) else "B")
    ra, rb = _results(a), _results(b)
    out = [compare_bench(ra[k], rb[k], label_a, label_b) for k in ra if k in rb]
    for c, adj in zip(out, stats.bh_adjust([c.p for c in out])):
        c.p_bh = adj
    return out


# ----------------------------------------------------------------------------- regressions

def similarity(a: str, b: str) -> float:
    if a == b:
        return 1.0
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


def _items_of(record: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(bench, id) -> item dict of an eval record's model (the `model` entry or the record itself)."""
    model = record.get("model", record)
    benches = model.get("benches", {}) if isinstance(model, Mapping) else {}
    return {(b, str(it.get("id"))): it for b, r in benches.items() for it in r.get("items", [])}


def diff_evals(previous: Mapping[str, Any], current: Mapping[str, Any],
               drift_threshold: float = DRIFT_THRESHOLD) -> list[dict[str, Any]]:
    """Changes from `previous` to `current` on the items both have: regressed, fixed, drifted."""
    old, new = _items_of(previous), _items_of(current)
    changes = []
    for key, cur in new.items():
        prev = old.get(key)
        if prev is None:
            continue
        base = {"bench": key[0], "id": key[1]}
        if prev.get("passed") and not cur.get("passed"):
            changes.append({**base, "change": "regressed"})
        elif not prev.get("passed") and cur.get("passed"):
            changes.append({**base, "change": "fixed"})
        else:
            sim = similarity(str(prev.get("answer", "")), str(cur.get("answer", "")))
            if sim < drift_threshold:
                changes.append({**base, "change": "drifted", "similarity": round(sim, 3)})
    return changes


def load_regression_set(path: str | Path) -> list[dict[str, Any]]:
    """Regression records: the bench item (prompt, expect) plus the optional known-good answer."""
    from iceburg_mlx.data.io import iter_jsonl
    from iceburg_mlx.eval.bench import item_from_record

    out = []
    for line, rec in iter_jsonl(path):
        try:
            item = item_from_record(rec, str(rec.get("bench", "")), f"regression-{line}")
        except DataError as e:
            raise DataError(f"{path}:{line}: {e}") from None
        answer = rec.get("answer", item.reference)
        out.append({"item": item, "answer": answer if isinstance(answer, str) else None})
    return out


def run_regression(model, tokenizer, path: str | Path, params: SamplingParams,
                   drift_threshold: float = DRIFT_THRESHOLD) -> dict[str, Any]:
    """Answer a regression set; flag failed checks and answers that drifted from the known-good."""
    from iceburg_mlx.eval.checkers import get_checker
    from iceburg_mlx.generation import generate_many
    from iceburg_mlx.templates import chat_prompt

    records = load_regression_set(path)
    gens = generate_many(model, tokenizer, [chat_prompt(tokenizer, r["item"].prompt) for r in records], params)
    flags, results = [], []
    for r, g in zip(records, gens):
        item, known = r["item"], r["answer"]
        row: dict[str, Any] = {"id": item.id, "answer": g.text}
        if item.bench and item.expect:
            check = get_checker(item.bench)(g.text, item.expect)
            row["passed"] = check.passed
            if not check.passed:
                flags.append({"id": item.id, "flag": "failed_check", "bench": item.bench, "details": check.details})
        if known is not None:
            row["similarity"] = round(similarity(known, g.text), 3)
            if row["similarity"] < drift_threshold:
                flags.append({"id": item.id, "flag": "drifted", "similarity": row["similarity"]})
        results.append(row)
    return {"path": str(path), "n": len(records), "flags": flags, "items": results}
