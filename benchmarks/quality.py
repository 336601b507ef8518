"""The role-quality table: for each role, the base model, SFT, SFT + DPO and SFT + GRPO on the
role's held-out bench (and its first item set, ROLE:v1) and on the general bench (forgetting),
with paired exact McNemar tests, Benjamini-Hochberg over every comparison, and Wilson intervals.

    python benchmarks/quality.py                      # everything, from a fresh clone (hours on CPU)
    python benchmarks/quality.py --roles oracle --stages base,sft
    python benchmarks/quality.py --use sft=oracle:/path/to/adapter   # reuse a trained adapter

It trains what it needs with the shipped recipes (`recipes/<role>.yaml`, `<role>-dpo.yaml` and
`<role>-grpo.yaml` started from that role's SFT adapter), evaluates each stage with the eval
defaults (greedy, seeded, the engine's default repetition controls), prints the table, and writes
quality.json, quality.png and quality.md (the table, the chart, wall times, and three answers per
role and stage drawn by a seeded draw) to --out. It is resumable: finished trainings and
evaluations are recorded in --out/state.json and skipped on a rerun.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import iceburg_mlx  # noqa: F401  (Linux CPU set-up before mlx.core)

REPO = Path(__file__).resolve().parents[1]
ROLES = ("oracle", "dissident", "surveyor", "synthesist")
STAGES = ("base", "sft", "dpo", "grpo")
COMPARE = (("sft", "base"), ("dpo", "sft"), ("grpo", "sft"))   # (candidate, against)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class State:
    """out/state.json: adapters trained, evaluations done, wall times (resumable)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {"adapters": {}, "evals": {}, "seconds": {}}

    def save(self) -> None:
        from iceburg_mlx.atomic import write_json

        write_json(self.path, self.data)


def train_stage(role: str, stage: str, state: State, adapters_dir: Path, runs_dir: Path) -> str | None:
    from iceburg_mlx.train.config import read_recipe
    from iceburg_mlx.train.run import TrainOptions, train_from_recipe

    key = f"{role}/{stage}"
    if key in state.data["adapters"]:
        return state.data["adapters"][key]
    recipe_file = REPO / "recipes" / (f"{role}.yaml" if stage == "sft" else f"{role}-{stage}.yaml")
    if not recipe_file.is_file():
        log(f"{key}: no {recipe_file.name}; stage skipped")
        return None
    overrides = [] if stage == "sft" else [f"method.init_adapter={state.data['adapters'][f'{role}/sft']}"]
    recipe, path = read_recipe(recipe_file, overrides)
    log(f"{key}: training {recipe_file.name} {' '.join(overrides)}")
    t0 = time.perf_counter()
    res = train_from_recipe(recipe, TrainOptions(adapters_dir=adapters_dir, runs_dir=runs_dir, recipe_path=path,
                                                 on_event=lambda m: log(f"{key}: {m}")))
    state.data["adapters"][key] = str(res.adapter_dir)
    state.data["seconds"][f"train {key}"] = round(time.perf_counter() - t0, 1)
    state.save()
    log(f"{key}: {res.registry_name} at {res.adapter_dir} ({state.data['seconds'][f'train {key}']:.0f} s)")
    return str(res.adapter_dir)


def eval_stage(role: str, stage: str, adapter: str | None, benches: list[str], state: State, n: int | None) -> dict:
    from iceburg_mlx.eval.bench import eval_params, load_items
    from iceburg_mlx.eval.run import Side, evaluate_side

    key = f"{role}/{stage}"
    if key in state.data["evals"]:
        return state.data["evals"][key]
    items = {b: load_items(b, REPO / "data", n) for b in benches}
    params = eval_params()
    log(f"{key}: evaluating on {', '.join(f'{b} ({len(v)})' for b, v in items.items())}")
    t0 = time.perf_counter()
    result, _ = evaluate_side(Side(None, adapter, key), items, params, perplexity=False, contamination=False)
    out = {b: {r.id: {"passed": r.passed, "answer": r.answer} for r in res.items} for b, res in result.benches.items()}
    state.data["evals"][key] = out
    state.data["seconds"][f"eval {key}"] = round(time.perf_counter() - t0, 1)
    state.data["decoding"] = {"repetition_penalty": params.repetition_penalty, "no_repeat_ngram": params.no_repeat_ngram,
                              "repetition_window": params.repetition_window, "max_tokens": params.max_tokens}
    state.save()
    return out


def build_table(state: State, roles: list[str]) -> dict:
    """Rows (role, stage, bench) with counts and Wilson intervals; paired comparisons with BH."""
    from iceburg_mlx.eval.stats import bh_adjust, mcnemar_exact, paired_counts, wilson_interval

    rows, comps = [], []
    for role in roles:
        for stage in STAGES:
            ev = state.data["evals"].get(f"{role}/{stage}")
            if not ev:
                continue
            for bench, items in ev.items():
                k, n = sum(v["passed"] for v in items.values()), len(items)
                lo, hi = wilson_interval(k, n)
                rows.append({"role": role, "stage": stage, "bench": bench, "passed": k, "n": n,
                             "accuracy": k / n, "ci95": [lo, hi]})
        for cand, against in COMPARE:
            a, b = state.data["evals"].get(f"{role}/{cand}"), state.data["evals"].get(f"{role}/{against}")
            if not a or not b:
                continue
            for bench in a:
                if bench not in b:
                    continue
                ids = sorted(set(a[bench]) & set(b[bench]))
                pc = paired_counts([a[bench][i]["passed"] for i in ids], [b[bench][i]["passed"] for i in ids])
                comps.append({"role": role, "bench": bench, "candidate": cand, "against": against, "n": len(ids),
                              "candidate_only": pc.only_a, "against_only": pc.only_b,
                              "difference": (pc.only_a - pc.only_b) / max(len(ids), 1),
                              "p": mcnemar_exact(pc.only_a, pc.only_b)})
    for c, adj in zip(comps, bh_adjust([c["p"] for c in comps])):
        c["p_bh"] = adj
    return {"rows": rows, "comparisons": comps}


def render(table: dict, state: State, draws: int = 3, seed: int = 0) -> str:
    lines = ["| role | stage | bench | passed | accuracy (95% Wilson) |", "|---|---|---|---|---|"]
    for r in table["rows"]:
        lines.append(f"| {r['role']} | {r['stage']} | {r['bench']} | {r['passed']}/{r['n']} | "
                     f"{100 * r['accuracy']:.0f}% ({100 * r['ci95'][0]:.0f}-{100 * r['ci95'][1]:.0f}%) |")
    lines += ["", "| role | bench | comparison | discordant (cand / against) | difference | p (exact McNemar) | "
                  "p (BH, all comparisons) | verdict |", "|---|---|---|---|---|---|---|---|"]
    for c in table["comparisons"]:
        better = c["p_bh"] < 0.05 and c["candidate_only"] > c["against_only"]
        worse = c["p_bh"] < 0.05 and c["candidate_only"] < c["against_only"]
        verdict = "better" if better else "worse" if worse else "no significant difference"
        lines.append(f"| {c['role']} | {c['bench']} | {c['candidate']} vs {c['against']} | {c['candidate_only']} / "
                     f"{c['against_only']} | {100 * c['difference']:+.0f} pts | {c['p']:.3g} | {c['p_bh']:.3g} | {verdict} |")
    lines += ["", "Wall times on this machine:", ""]
    lines += [f"- {k}: {v / 60:.1f} min" for k, v in sorted(state.data["seconds"].items())]
    rng = random.Random(seed)
    lines += ["", f"Answers drawn at random (seed {seed}), {draws} per role and stage, from the role bench:", ""]
    for key, ev in sorted(state.data["evals"].items()):
        role = key.split("/")[0]
        items = ev.get(role, {})
        for item_id in rng.sample(sorted(items), min(draws, len(items))):
            ans = items[item_id]["answer"].strip().replace("\n", " / ")
            lines.append(f"- **{key}**, {item_id} ({'pass' if items[item_id]['passed'] else 'fail'}): {ans[:600]}")
    return "\n".join(lines) + "\n"


def chart(table: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in table["rows"] if ":" not in r["bench"]]
    groups = sorted({(r["role"], r["bench"]) for r in rows}, key=lambda g: (g[0], g[1] == "general"))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(groups)), 4))
    w = 0.8 / len(STAGES)
    for s, stage in enumerate(STAGES):
        xs, ys, lo, hi = [], [], [], []
        for g, (role, bench) in enumerate(groups):
            r = next((r for r in rows if (r["role"], r["bench"], r["stage"]) == (role, bench, stage)), None)
            if r:
                xs.append(g + (s - 1.5) * w)
                ys.append(100 * r["accuracy"])
                lo.append(100 * (r["accuracy"] - r["ci95"][0]))
                hi.append(100 * (r["ci95"][1] - r["accuracy"]))
        if xs:
            ax.bar(xs, ys, w, yerr=[lo, hi], capsize=2, label=stage)
    ax.set_xticks(range(len(groups)), [f"{r}\n{b}" for r, b in groups], fontsize=8)
    ax.set_ylabel("pass rate (%), 95% Wilson interval")
    ax.set_ylim(0, 100)
    ax.legend(ncol=len(STAGES), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.12), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roles", default=",".join(ROLES))
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--out", type=Path, default=REPO / "quality-run")
    ap.add_argument("--adapters-dir", type=Path, default=None, help="registry for the trained adapters (default: OUT/adapters)")
    ap.add_argument("--use", action="append", default=[], metavar="STAGE=ROLE:PATH",
                    help="use this adapter for a stage instead of training it")
    ap.add_argument("--n", type=int, default=None, help="first N items of each bench (default: all)")
    ap.add_argument("--no-v1", action="store_true", help="skip the first item set (ROLE:v1)")
    args = ap.parse_args()
    roles, stages = args.roles.split(","), args.stages.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    state = State(args.out / "state.json")
    for u in args.use:
        stage, _, rest = u.partition("=")
        role, _, path = rest.partition(":")
        state.data["adapters"][f"{role}/{stage}"] = path
    adapters_dir = args.adapters_dir or args.out / "adapters"
    for role in roles:
        benches = [role, "general"] + ([] if args.no_v1 else [f"{role}:v1"])
        for stage in stages:
            adapter = None if stage == "base" else train_stage(role, stage, state, adapters_dir, args.out / "runs")
            if stage != "base" and adapter is None:
                continue
            eval_stage(role, stage, adapter, benches, state, args.n)
    table = build_table(state, roles)
    from iceburg_mlx.atomic import write_json, write_text

    write_json(args.out / "quality.json", {"table": table, "adapters": state.data["adapters"],
                                           "seconds": state.data["seconds"], "decoding": state.data.get("decoding")})
    png = chart(table, args.out / "quality.png")
    md = render(table, state)
    write_text(args.out / "quality.md", (f"![quality]({png.name})\n\n" if png else "") + md)
    print(md)


if __name__ == "__main__":
    main()
