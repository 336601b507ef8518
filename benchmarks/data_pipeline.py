"""Benchmark the data pipeline: validate, dedup and score over N synthetic records, a tenth of
them planted near duplicates. Each stage runs in a fresh child process so its peak RSS is its
own; the table shows records/s, peak RSS and RSS above the child's post-import baseline.
Run it with `nice`: `nice -n 10 python benchmarks/data_pipeline.py --records 100000`.
`--sizes 50000,100000` repeats the stages at several sizes to show memory does not grow with
the file beyond the LSH index.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

WORKERS = int(os.environ.get("ICEBURG_BENCH_WORKERS", "1"))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_stage(stage: str, path: str, workdir: str) -> dict:
    """In the child: run one stage, report seconds and memory as JSON."""
    from iceburg_mlx.data import dedup, score, validate  # noqa: F401  (imports before the baseline)
    import datasketch  # noqa: F401

    base = _current_rss_mb()
    t = time.perf_counter()
    extra: dict = {}
    if stage == "validate":
        rep = validate.validate_file(path)
        extra = {"errors": rep.errors, "template_fraction": rep.template_fraction}
        n = rep.records
    elif stage == "dedup":
        rep = dedup.dedup_files([path], os.path.join(workdir, "dedup.jsonl"), workers=WORKERS)
        extra = {"removed": rep.removed, "clusters": len(rep.clusters), "workers": WORKERS}
        n = rep.records
    elif stage == "score":
        rep = score.score_file(path, os.path.join(workdir, "scored.jsonl"))
        extra = {"mean_score": round(rep.mean, 3)}
        n = rep.records
    else:
        raise SystemExit(f"unknown stage {stage}")
    dt = time.perf_counter() - t
    return {"stage": stage, "records": n, "seconds": dt, "peak_mb": _rss_mb(), "baseline_mb": base, **extra}


def generate(path: str, n: int, seed: int) -> None:
    from iceburg_mlx.data.io import write_jsonl
    from iceburg_mlx.data.synthetic import near_duplicate_corpus

    recs, _ = near_duplicate_corpus(n - n // 10, n // 10, seed=seed)
    write_jsonl(path, recs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--sizes", type=str, default="", help="comma-separated sizes (overrides --records)")
    ap.add_argument("--stages", type=str, default="validate,dedup,score")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print results as JSON too")
    ap.add_argument("--workers", type=int, default=1, help="dedup sketching processes (0 = in-process)")
    ap.add_argument("--_child", nargs=3, metavar=("STAGE", "PATH", "WORKDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_stage(*args._child)))
        return

    from rich.console import Console
    from rich.table import Table

    sizes = [int(s) for s in args.sizes.split(",") if s] or [args.records]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = os.path.join(tmp, f"bench_{n}.jsonl")
            t = time.perf_counter()
            generate(path, n, args.seed)
            gen_s = time.perf_counter() - t
            mb = os.path.getsize(path) / 2**20
            Console(stderr=True).print(f"generated {n} records ({mb:.0f} MB) in {gen_s:.1f}s")
            for stage in args.stages.split(","):
                env = {**os.environ, "ICEBURG_BENCH_WORKERS": str(args.workers)}
                out = subprocess.run([sys.executable, __file__, "--_child", stage, path, tmp],
                                     check=True, capture_output=True, text=True, env=env)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r["file_mb"] = mb
                results.append(r)
    table = Table(title="iceburg-mlx data pipeline benchmark")
    for col in ("stage", "records", "file MB", "seconds", "records/s", "peak RSS MB", "above baseline MB", "notes"):
        table.add_column(col, justify="left" if col in ("stage", "notes") else "right")
    for r in results:
        notes = ", ".join(f"{k}={r[k]}" for k in ("errors", "removed", "clusters", "workers", "mean_score", "template_fraction") if k in r)
        table.add_row(r["stage"], str(r["records"]), f"{r['file_mb']:.0f}", f"{r['seconds']:.1f}",
                      f"{r['records'] / r['seconds']:,.0f}", f"{r['peak_mb']:.0f}",
                      f"{r['peak_mb'] - r['baseline_mb']:.0f}", notes)
    Console(width=160).print(table)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
