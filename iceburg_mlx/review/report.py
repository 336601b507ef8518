"""The review's analysis and its report: a JSON record, a markdown report and a PNG chart.

- Preferences: A wins, ties, B wins; B's win rate among decided judgments with a Wilson 95%
  interval and the two-sided sign test. Judgments of one item by several raters are not
  independent, so the same is given per item (the raters' majority; an even split is a tie).
- Rubric: per criterion, A's and B's mean score and the paired mean difference B - A, each with
  a 95% t interval over judgments.
- Agreement: Cohen's kappa on preferences for two raters (items both rated), Krippendorff's
  alpha for any number (nominal on preferences, interval on each criterion's scores, a unit
  being one response of one item).
- Position bias: how often the response shown first wins among decided judgments, against 50%
  (sign test). Which side is shown first is balanced over the items, so this is not A vs B.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from iceburg_mlx.atomic import atomic_path, write_json, write_text
from iceburg_mlx.review import stats
from iceburg_mlx.review.pairs import dpo_pairs
from iceburg_mlx.review.store import Judgment, ReviewStore

REPORT_MD, RECORD_JSON, CHART_PNG = "report.md", "review.json", "review.png"


def _r(x: float | None, k: int = 4) -> float | None:
    return None if x is None else round(x, k)


def preference_summary(preferred: list[str]) -> dict[str, Any]:
    """Counts of "A" / "tie" / "B", B's win rate among decided with its Wilson interval, the sign test."""
    c = Counter(preferred)
    a, b, ties = c["A"], c["B"], c["tie"]
    lo, hi = stats.wilson_interval(b, a + b)
    return {"n": len(preferred), "a": a, "ties": ties, "b": b, "b_win_rate": _r(b / (a + b)) if a + b else None,
            "ci95": [_r(lo), _r(hi)] if a + b else None, "sign_p": stats.sign_test(a, b)}


def _majority(votes: list[str]) -> str:
    score = votes.count("B") - votes.count("A")
    return "B" if score > 0 else "A" if score < 0 else "tie"


def agreement(judgments: list[Judgment], criteria: tuple[str, ...]) -> dict[str, Any]:
    raters = sorted({j.rater for j in judgments})
    out: dict[str, Any] = {"raters": len(raters)}
    if len(raters) < 2:
        return out
    by_item: dict[int, dict[str, str]] = defaultdict(dict)
    for j in judgments:
        by_item[j.idx][j.rater] = j.preferred
    if len(raters) == 2:
        common = [v for v in by_item.values() if len(v) == 2]
        out["kappa"] = {"n": len(common), "value": _r(stats.cohens_kappa([v[raters[0]] for v in common],
                                                                           [v[raters[1]] for v in common]))}
    out["alpha_preference"] = {"n": sum(len(v) >= 2 for v in by_item.values()),
                               "value": _r(stats.krippendorff_alpha([list(v.values()) for v in by_item.values()]))}
    per_criterion = {}
    for c in criteria:
        units: dict[tuple[int, str], list[int]] = defaultdict(list)
        for j in judgments:
            units[(j.idx, "A")].append(j.scores_a[c])
            units[(j.idx, "B")].append(j.scores_b[c])
        per_criterion[c] = _r(stats.krippendorff_alpha(list(units.values()), "interval"))
    out["alpha_criteria"] = per_criterion
    return out


def analyze(store: ReviewStore) -> dict[str, Any]:
    """The JSON-able record of a session's judgments."""
    meta, items, js = store.meta, store.items, store.judgments()
    by_item: dict[int, list[str]] = defaultdict(list)
    for j in js:
        by_item[j.idx].append(j.preferred)
    criteria = []
    for c in meta["rubric"]:
        k = c["key"]
        criteria.append({"key": k, "label": c["label"],
                         "a": stats.mean_interval([j.scores_a[k] for j in js]).to_dict(),
                         "b": stats.mean_interval([j.scores_b[k] for j in js]).to_dict(),
                         "b_minus_a": stats.mean_interval([j.scores_b[k] - j.scores_a[k] for j in js]).to_dict()})
    first, second = sum(j.choice == "1" for j in js), sum(j.choice == "2" for j in js)
    lo, hi = stats.wilson_interval(first, first + second)
    raters = []
    for name in sorted({j.rater for j in js}):
        mine = [j for j in js if j.rater == name]
        raters.append({"rater": name, **preference_summary([j.preferred for j in mine]),
                       "chose_first": sum(j.choice == "1" for j in mine)})
    return {
        "schema": "iceburg-mlx/review-report/1",
        "session": meta["session"], "file": str(store.path), "bench": meta["bench"], "created": meta["created"],
        "sides": meta["sides"], "model": meta.get("model"), "decoding": meta.get("decoding"),
        "items": len(items), "a_first_items": sum(it.a_first for it in items),
        "identical_answers": sum(it.answer_a == it.answer_b for it in items),
        "judgments": len(js), "items_judged": len(by_item),
        "preferences": preference_summary([j.preferred for j in js]),
        "per_item": preference_summary([_majority(v) for v in by_item.values()]),
        "criteria": criteria,
        "agreement": agreement(js, store.criteria),
        "position": {"first": first, "second": second, "first_share": _r(first / (first + second)) if first + second else None,
                     "ci95": [_r(lo), _r(hi)] if first + second else None, "sign_p": stats.sign_test(first, second)},
        "raters": raters,
        "comments": [{"rater": j.rater, "item": store.item(j.idx).item_id, "preferred": j.preferred, "comment": j.comment}
                     for j in js if j.comment],
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _num(x: float | None, k: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{k}f}"


def _mi(m: dict) -> str:
    lo, hi = m["ci95"]
    return f"{_num(m['mean'])} [{_num(lo)}, {_num(hi)}]" if lo is not None else _num(m["mean"])


def verdict(record: dict[str, Any]) -> str:
    """One line: which side the raters preferred, how sure, how many judgments."""
    a, b, p = record["sides"]["A"]["spec"], record["sides"]["B"]["spec"], record["preferences"]
    if not p["n"]:
        return f"{b} (B) vs {a} (A): no judgments yet"
    rate = "no decided judgments" if p["b_win_rate"] is None else (
        f"B preferred in {_pct(p['b_win_rate'])} [{_pct(p['ci95'][0])}-{_pct(p['ci95'][1])}] of {p['a'] + p['b']} decided")
    return (f"{b} (B) vs {a} (A) on {record['bench']}: {rate} (A {p['a']}, ties {p['ties']}, B {p['b']}), "
            f"sign test {_p(p['sign_p'])}")


def _pref_row(label: str, p: dict) -> str:
    ci = "n/a" if p["ci95"] is None else f"{_pct(p['ci95'][0])}–{_pct(p['ci95'][1])}"
    return f"| {label} | {p['n']} | {p['a']} | {p['ties']} | {p['b']} | {_pct(p['b_win_rate'])} | {ci} | {_p(p['sign_p'])} |"


def render_markdown(record: dict[str, Any], chart: str | None = None) -> str:
    s, d = record["sides"], record.get("decoding") or {}
    lines = [f"# Blind review: {s['A']['spec']} (A) vs {s['B']['spec']} (B) on {record['bench']}", "",
             (f"Session {record['session']} · created {record['created']} · {record['items']} items "
              f"({record['items_judged']} judged) · {record['agreement']['raters']} raters · {record['judgments']} "
              f"judgments · temperature {d.get('temperature')}, max {d.get('max_tokens')} tokens, seed {d.get('seed')} · "
              f"base {(record.get('model') or {}).get('spec')}"), "",
             f"**{verdict(record)}**", "", "## Preferences", "",
             "| | judgments | A wins | ties | B wins | B win rate (decided) | 95% Wilson | sign test |",
             "|---|---:|---:|---:|---:|---:|---|---|",
             _pref_row("all judgments", record["preferences"]),
             _pref_row("per item (raters' majority)", record["per_item"]), ""]
    if record["identical_answers"]:
        lines += [f"{record['identical_answers']} items had the same answer from both sides.", ""]
    lines += ["## Rubric (1-5: mean and 95% t interval)", "", "| criterion | A | B | B − A (paired) |", "|---|---|---|---|"]
    lines += [f"| {c['label']} | {_mi(c['a'])} | {_mi(c['b'])} | {_mi(c['b_minus_a'])} |" for c in record["criteria"]]
    ag = record["agreement"]
    lines += ["", "## Agreement between raters", ""]
    if ag["raters"] < 2:
        lines.append("One rater: no agreement to measure.")
    else:
        if "kappa" in ag:
            lines.append(f"- Cohen's kappa on preferences: {_num(ag['kappa']['value'], 3)} over {ag['kappa']['n']} items rated by both")
        lines.append(f"- Krippendorff's alpha (nominal) on preferences: {_num(ag['alpha_preference']['value'], 3)} "
                     f"over {ag['alpha_preference']['n']} items rated by two or more")
        labels = {c["key"]: c["label"] for c in record["criteria"]}
        lines.append("- Krippendorff's alpha (interval) on scores: "
                     + ", ".join(f"{labels[k]} {_num(v, 3)}" for k, v in ag["alpha_criteria"].items()))
    pos = record["position"]
    lines += ["", "## Position bias", "",
              (f"The response shown first won {_pct(pos['first_share'])} of {pos['first'] + pos['second']} decided judgments"
               + (f" (95% Wilson {_pct(pos['ci95'][0])}–{_pct(pos['ci95'][1])})" if pos["ci95"] else "")
               + f", sign test against 50% {_p(pos['sign_p'])}. A was shown first on {record['a_first_items']} of "
               f"{record['items']} items."), "",
              "## Raters", "", "| rater | judgments | A | tie | B | chose Response 1 |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['rater']} | {r['n']} | {r['a']} | {r['ties']} | {r['b']} | {r['chose_first']} |" for r in record["raters"]]
    if record["comments"]:
        lines += ["", "## Comments", ""]
        lines += [f"- {c['rater']} on {c['item']} (preferred {c['preferred']}): {c['comment']}" for c in record["comments"]]
    lines += ["", f"![preferences and rubric]({chart})" if chart else "_Chart skipped: matplotlib is not installed._"]
    return "\n".join(lines) + "\n"


def plot(record: dict[str, Any], path: Path) -> Path | None:
    """Preference shares (all, per rater) and per-criterion means with intervals; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [("all", record["preferences"])] + [(r["rater"], r) for r in record["raters"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.5 * max(len(rows), 6) + 1.2), dpi=100)
    for y, (name, p) in enumerate(reversed(rows)):
        n = max(p["n"], 1)
        start = 0.0
        for key, color, label in (("a", "#7a8ca8", "A wins"), ("ties", "#d5d9e0", "tie"), ("b", "#2456a6", "B wins")):
            width = 100 * p[key] / n
            left.barh(y, width, left=start, color=color, label=label if y == 0 else None)
            start += width
    left.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)])
    left.set_xlim(0, 100)
    left.axvline(50, color="k", lw=0.6, ls=":")
    left.set_xlabel("% of judgments")
    left.legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    crit = record["criteria"]
    for k, (side, color) in enumerate((("a", "#7a8ca8"), ("b", "#2456a6"))):
        xs = [i + (k - 0.5) * 0.35 for i in range(len(crit))]
        means = [c[side]["mean"] or 0 for c in crit]
        err = [[(m - c[side]["ci95"][0]) if c[side]["ci95"][0] is not None else 0 for m, c in zip(means, crit)],
               [(c[side]["ci95"][1] - m) if c[side]["ci95"][1] is not None else 0 for m, c in zip(means, crit)]]
        right.bar(xs, means, 0.35, yerr=err, capsize=3, color=color, label=side.upper())
    right.set_xticks(range(len(crit)), [c["label"] for c in crit], fontsize=8)
    right.set_ylim(0, 5.2)
    right.set_ylabel("mean score (1-5), 95% t interval")
    right.legend(fontsize=8, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path


def write_report(store: ReviewStore, out_dir: str | Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """review.json, review.png (with matplotlib) and report.md into `out_dir`; (record, paths)."""
    out = Path(out_dir)
    record = analyze(store)
    paths = {"record": write_json(out / RECORD_JSON, record)}
    chart = plot(record, out / CHART_PNG)
    if chart is not None:
        paths["chart"] = chart
    paths["report"] = write_text(out / REPORT_MD, render_markdown(record, CHART_PNG if chart else None))
    return record, paths


def write_pairs(store: ReviewStore, path: str | Path) -> int:
    """The session's DPO pairs as JSONL at `path` (atomically); returns how many."""
    pairs = dpo_pairs(store)
    write_text(Path(path), "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    return len(pairs)
