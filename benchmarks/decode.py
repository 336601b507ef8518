"""Decode speed: iceburg-mlx vs mlx-lm's generate vs llama.cpp on the same model, in one run.

    python benchmarks/decode.py [--model M] [--max-tokens 128] [--reps 3]

Rows:
- iceburg-mlx: our engine on the model as our loader prepares it (f32 on CPU).
  On Linux CPU it decodes from the packed (quantized) weights the f32 ones were dequantized from
  (`iceburg_mlx.models.packed`); its peak adds those packed bytes to MLX's peak.
- mlx-lm: `mlx_lm.generate.stream_generate` on the same model object with the packed path off,
  i.e. the f32 weights as mlx-lm holds them, under the same process set-up (OpenBLAS, GEMV shim,
  malloc setting).
- mlx-lm, packed weights: the same on our packed path; against it the ratio isolates the engine.
- mlx-lm, stock set-up: the same in a child process with our Linux set-up switched off
  (ICEBURG_MLX_NO_TUNE=1: MLX's bundled BLAS, default malloc) - what mlx-lm gives out of the box.
- llama.cpp: llama-cpp-python on the same GGUF (its own quantized kernels), in a child process.
Runs alternate and report medians; this machine is noisy, so compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from peers import require  # noqa: E402  (benchmarks/peers.py)

PROMPT = ("You are reviewing a research plan. Write a long, detailed essay that explains how a transformer "
          "language model turns a prompt into an answer: tokenization, embeddings, self-attention with "
          "queries, keys and values, the feed-forward layers, residual connections and normalization, the "
          "output projection to the vocabulary, sampling strategies such as greedy decoding, temperature and "
          "nucleus sampling, and the key-value cache that makes generation fast. For each part, explain what "
          "it computes, why it is needed, and what goes wrong without it. Then discuss the costs of each step "
          "on a laptop CPU versus a GPU, in terms of memory bandwidth and arithmetic, and finish with three "
          "practical tips for running small models locally. Use headings and full paragraphs.")


def _measure_mlx(which: str, model_spec: str | None, max_tokens: int, reps: int) -> list[dict]:
    import iceburg_mlx  # noqa: F401  (set-up before mlx.core)
    import mlx.core as mx
    from mlx_lm.generate import stream_generate

    from iceburg_mlx.generation import GenerationStats, stream
    from iceburg_mlx.templates import chat_prompt
    from iceburg_mlx.models import load_model, packed
    from iceburg_mlx.sampling import SamplingParams

    loaded = load_model(model_spec)
    extra_mib = packed.nbytes() / 2**20
    ids = chat_prompt(loaded.tokenizer, [{"role": "user", "content": PROMPT}])
    params = SamplingParams(max_tokens=max_tokens)

    def ours():
        st = GenerationStats()
        for _ in stream(loaded.model, loaded.tokenizer, ids, params, stats=st):
            pass
        return {"prompt_tokens": st.prompt_tokens, "prompt_tps": st.prompt_tps, "tokens": st.completion_tokens,
                "decode_tps": st.decode_tps, "peak_mib": st.peak_memory_bytes / 2**20 + extra_mib}

    def theirs(use_packed: bool):
        packed.set_enabled(use_packed)
        mx.reset_peak_memory()
        r = None
        for r in stream_generate(loaded.model, loaded.tokenizer, ids, max_tokens=max_tokens):
            pass
        packed.set_enabled(True)
        return {"prompt_tokens": r.prompt_tokens, "prompt_tps": r.prompt_tps, "tokens": r.generation_tokens,
                "decode_tps": r.generation_tps,
                "peak_mib": r.peak_memory * 1e9 / 2**20 + (extra_mib if use_packed else 0.0)}

    fns = {"iceburg-mlx": ours, "mlx-lm": lambda: theirs(False), "mlx-lm, packed weights": lambda: theirs(True)}
    chosen = [fns[w] for w in which.split("|")]
    for f in chosen:  # warm-up
        f()
    results = {w: [] for w in which.split("|")}
    for _ in range(reps):
        for w, f in zip(which.split("|"), chosen):
            results[w].append(f())
    return [{"name": w, **_median(rs)} for w, rs in results.items()]


def _measure_llama_cpp(path: str, ids: list[int], max_tokens: int, reps: int) -> dict:
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(path, n_ctx=2048, n_threads=2, verbose=False)
    runs = []
    for _ in range(reps + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        n = 0
        while n < max_tokens:
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            n += 1
            if tok == llm.token_eos() or n == max_tokens:
                break
            llm.eval([tok])
        t2 = time.perf_counter()
        runs.append({"prompt_tokens": len(ids), "prompt_tps": len(ids) / (t1 - t0), "tokens": n,
                     "decode_tps": (n - 1) / (t2 - t1) if n > 1 else 0.0})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"name": "llama.cpp", **_median(runs[1:]), "peak_mib": rss, "peak_kind": "max RSS"}


def _median(rs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rs) for k in rs[0]}


def _child(args, extra_env: dict, mode: str) -> dict | list:
    env = dict(os.environ, **extra_env)
    cmd = [sys.executable, __file__, "--child", mode, "--max-tokens", str(args.max_tokens), "--reps", str(args.reps)]
    if args.model:
        cmd += ["--model", args.model]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"child {mode} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    require("mlx_lm", "llama_cpp")  # before any work: a missing peer is named at once
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model spec (default: the embedded SmolLM2)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child == "mlx-lm-stock":
        print(json.dumps(_measure_mlx("mlx-lm", args.model, args.max_tokens, args.reps)[0]))
        return
    if args.child == "llama.cpp":
        import iceburg_mlx  # noqa: F401
        from iceburg_mlx.templates import chat_prompt
        from iceburg_mlx.models import load_model, resolve

        src = resolve(args.model)
        tok = load_model(args.model, lazy=True).tokenizer
        ids = chat_prompt(tok, [{"role": "user", "content": PROMPT}])
        print(json.dumps(_measure_llama_cpp(str(src.path), ids, args.max_tokens, args.reps)))
        return

    rows = _measure_mlx("iceburg-mlx|mlx-lm|mlx-lm, packed weights", args.model, args.max_tokens, args.reps)
    rows.append({**_child(args, {"ICEBURG_MLX_NO_TUNE": "1", "GLIBC_TUNABLES": ""}, "mlx-lm-stock"),
                 "name": "mlx-lm, stock set-up"})
    try:
        rows.append(_child(args, {}, "llama.cpp"))
    except SystemExit as e:
        print(f"llama.cpp skipped: {e}", file=sys.stderr)
    _print(rows)


def _print(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    base = next(r for r in rows if r["name"] == "iceburg-mlx")
    t = Table(title="decode benchmark (greedy, medians)")
    for c in ("engine", "prompt tok", "prompt tok/s", "new tok", "decode tok/s", "peak MiB",
              "iceburg decode x", "iceburg prompt x"):
        t.add_column(c, justify="right" if c != "engine" else "left")
    for r in rows:
        kind = r.get("peak_kind", "MLX")
        t.add_row(r["name"], f"{r['prompt_tokens']:.0f}", f"{r['prompt_tps']:.1f}", f"{r['tokens']:.0f}",
                  f"{r['decode_tps']:.1f}", f"{r['peak_mib']:.0f} ({kind})",
                  f"{base['decode_tps'] / r['decode_tps']:.2f}", f"{base['prompt_tps'] / r['prompt_tps']:.2f}")
    Console().print(t)
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
