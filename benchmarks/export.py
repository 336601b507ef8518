"""Benchmark our GGUF export against llama.cpp on SmolLM2-135M-Instruct, in one run.

Part 1, the quantizer: export the embedded default (a Q4_1 GGUF) as F16 with iceburg-mlx;
quantize it to Q4_K_M with `iceburg-mlx`'s exporter (from the loaded weights, as `iceburg-mlx fuse
--no-imatrix` does, again from the F16 file, the input llama.cpp gets, and with an importance matrix
as `fuse` does by default) and with `llama_cpp.llama_model_quantize` from our F16 file; time the
quantizers; compare tensor types and bytes; and measure each file's perplexity in llama.cpp on the
same held-out English text.

Part 2, a trained adapter (`--adapter`, default the registry's `oracle` when there is one): fuse it
into every GGUF type with `iceburg-mlx fuse`'s code and check each file in llama.cpp against
iceburg-mlx running base + adapter: F16 greedy tokens, Q8_0 top-1 agreement over the held-out
text's positions, and each 4-bit type's perplexity against F16's; also llama.cpp's own floor for
Q8_0 (an F16 file whose output head alone is Q8_0) and, for a role adapter, how many of the role's
eval prompts each file answers in the role's format and to its checker's satisfaction (with the
shipped base alone for comparison).

Prints rich tables. Run it with `nice`: `nice -n 10 python benchmarks/export.py` (9.5 minutes
in all on a 2-core AVX2 machine with the oracle adapter; `--role-items 0` skips the role prompts).
"""

from __future__ import annotations

import argparse
import ctypes
import math
import tempfile
import time
from pathlib import Path

import numpy as np

import iceburg_mlx  # noqa: F401  (OpenBLAS preload before mlx.core)
from peers import require  # noqa: E402  (benchmarks/peers.py)

TEXT = """The river town woke slowly on market days. Before dawn the bakers lit their ovens, and by the
time the first light reached the hills the smell of bread had drifted down every street. Farmers
arrived with carts of apples, cabbages and eggs, and set up their stalls beneath the old stone
arches of the square. Children ran between the tables while their parents argued about prices.
The mayor, a patient woman who had lived in the town all her life, walked from stall to stall and
asked about the harvest, the weather and the health of each family. In the afternoon a storm came
over the mountains. The traders covered their goods with canvas and waited under the arches, and
when the rain stopped the square was bright and clean. People said that the storm was a good sign,
because it meant the river would be full for the summer and the mills would keep turning. In the
evening musicians played near the fountain, and the market closed only when the lamps were lit.
Scientists measure the temperature of the ocean with floating instruments that drift with the
currents and dive to two thousand metres every ten days. Each time they surface they send their
measurements to a satellite, and the data are shared freely with researchers around the world.
Over the years these records have shown how heat moves through the deep water and how it returns
to the surface, which helps to explain changes in the weather from one season to the next.
A good recipe for bread needs only flour, water, salt and yeast, but the baker's skill lies in
time and temperature. The dough is mixed until it is smooth, then left to rise in a warm place
until it has doubled in size. It is folded gently to keep the bubbles of gas, shaped into loaves
and left to rise again. A hot oven gives the crust its colour and the crumb its soft, open texture.
Many bakers keep a piece of dough from each batch to start the next one, so that the flavour of a
single loaf may carry the history of years of baking. In some villages the same starter has been
passed from one generation to the next, and people say they can taste the difference.
The history of the railway is also the history of time. Before trains, each town kept its own
local time, set by the position of the sun at noon. When journeys between cities became fast and
regular, the differences caused confusion, and railway companies agreed on a standard time for the
whole country. Clocks in stations were set by telegraph, and soon the rest of society followed."""


def open_llama(path: Path, threads: int, n_ctx: int = 1024):
    """`path` loaded in llama.cpp, keeping the logits of every position it evaluates."""
    import llama_cpp

    return llama_cpp.Llama(str(path), logits_all=True, n_ctx=n_ctx, n_threads=threads, verbose=False)


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits at every position of `ids` (one evaluation from an empty context)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def perplexity_of(logits: np.ndarray, ids: list[int]) -> float:
    z = logits.astype(np.float64)[:-1]
    m = z.max(-1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(-1)) + m[:, 0]
    return math.exp(float(np.mean(lse - z[np.arange(len(ids) - 1), ids[1:]])))


def perplexity(path: Path, ids: list[int], threads: int) -> float:
    return perplexity_of(llama_logits(open_llama(path, threads, max(1024, len(ids) + 8)), ids), ids)


def llama_quantize(src: Path, dst: Path, threads: int) -> float:
    import llama_cpp
    from gguf import LlamaFileType

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(LlamaFileType.MOSTLY_Q4_K_M)
    params.nthread = threads
    t = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed ({rc})")
    return time.perf_counter() - t


def compare(a: Path, b: Path) -> tuple[int, int, int]:
    """(tensors with the same type, of those with identical bytes, total)."""
    from iceburg_mlx.models.gguf_file import read_gguf

    ga, gb = read_gguf(a), read_gguf(b)
    same = [n for n, t in ga.tensors.items() if gb.tensors[n].qtype == t.qtype]
    exact = sum(np.array_equal(np.asarray(ga.raw(n)), np.asarray(gb.raw(n))) for n in same)
    return len(same), exact, len(ga.tensors)


PROMPT = [{"role": "user", "content": "Is it true that the Great Wall of China can be seen from the Moon "
                                      "with the naked eye?"}]
GREEDY = 48
ROLE_TOKENS = 96
QUALITY_TYPES = ("f16", "q8_0", "q4_0", "q4_1", "q4_k_m", "q6_k")


def llama_greedy(llm, prompt: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


def mlx_greedy(model, prompt: list[int], n: int) -> list[int]:
    import mlx.core as mx

    ids = list(prompt)
    for _ in range(n):
        ids.append(int(mx.argmax(model(mx.array([ids]))[0, -1]).item()))
    return ids[len(prompt):]


def leading_same(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def q8_runtime_top1(model: str | None, adapter: str, ids: list[int], top1: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement with `top1` of base + adapter in f32 when the input of (head only, every)
    product is rounded to Q8_0 blocks as llama.cpp's Q8_0 products round it (ggml's
    quantize_row_q8_0: per 32 values d = max|x| / 127, stored as f16), the weights left exact:
    what llama.cpp's runtime alone costs a Q8_0 file, whatever its weights."""
    import mlx.core as mx
    import mlx.nn as nn

    from iceburg_mlx.adapters import load_with_adapter

    def q8(x):
        b = x.reshape(*x.shape[:-1], x.shape[-1] // 32, 32)
        d = mx.max(mx.abs(b), axis=-1, keepdims=True) / 127
        q = mx.round(b * mx.where(d > 0, 1 / mx.where(d > 0, d, 1), 0))
        return (q * d.astype(mx.float16).astype(mx.float32)).reshape(x.shape)

    class RoundedInput(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def __call__(self, x):
            return self.inner(q8(x))

    m = load_with_adapter(model, compute="float32", adapter=adapter).model
    h = m.model(mx.array([ids]))
    head = m.model.embed_tokens.as_linear if getattr(m, "lm_head", None) is None else m.lm_head
    head_only = np.array(mx.argmax(head(q8(h))[0], axis=-1))
    for layer in m.model.layers:
        for holder in (layer.self_attn, layer.mlp):
            for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
                if hasattr(holder, name):
                    setattr(holder, name, RoundedInput(getattr(holder, name)))
    every = np.array(mx.argmax(head(q8(m.model(mx.array([ids]))))[0], axis=-1))
    return float(np.mean(head_only == top1)), float(np.mean(every == top1))


def head_q8_0_top1(model: str | None, adapter: str, ids: list[int], top1: np.ndarray, threads: int,
                   d: Path) -> float:
    """Top-1 agreement with `top1` in llama.cpp of an F16 file of base + adapter whose output head
    alone is Q8_0. SmolLM2's head is already Q8_0 and is written back unchanged, so what remains is
    llama.cpp rounding the head's input to Q8_0 blocks, as it does for every Q8_0 product."""
    from gguf import GGMLQuantizationType as Q

    from iceburg_mlx.export import mix
    from iceburg_mlx.export.fusion import _vocab
    from iceburg_mlx.export.gguf_export import write_gguf
    from iceburg_mlx.adapters import load_with_adapter
    from iceburg_mlx.adapters.layers import fuse_model

    fused = load_with_adapter(model, compute="quantized", adapter=adapter)
    fuse_model(fused.model, dequantize=True)
    plan = mix.plan

    def head_q8_0(p, shapes, n):
        head = "output.weight" if "output.weight" in shapes else "token_embd.weight"
        return {k: (Q.Q8_0 if k == head else v) for k, v in plan(p, shapes, n).items()}

    mix.plan = head_q8_0
    try:
        path = write_gguf(fused.model, fused.config, d / "head-q8_0.gguf", "f16", _vocab(fused)).path
    finally:
        mix.plan = plan
    logits = llama_logits(open_llama(path, threads, max(1024, len(ids) + 8)), ids)
    return float(np.mean(np.argmax(logits, axis=-1) == top1))


def role_bench(llm, tokenizer, items) -> tuple[int, int]:
    """(answers in the role's format, answers the role's checker passes) of llama.cpp, greedy, on
    the role's eval items (the conversation carries the role's system prompt)."""
    from iceburg_mlx.eval.checkers import get_checker
    from iceburg_mlx.templates import chat_prompt

    fmt = ok = 0
    for it in items:
        llm.reset()
        out: list[int] = []
        for tok in llm.generate(chat_prompt(tokenizer, it.prompt), temp=0.0, top_k=1):
            if tok == llm.token_eos() or len(out) >= ROLE_TOKENS:
                break
            out.append(tok)
        r = get_checker(it.bench)(llm.detokenize(out).decode("utf-8", "replace"), it.expect)
        fmt += bool(r.details.get("format_ok", r.passed))
        ok += r.passed
    return fmt, ok


def adapter_quality(adapter: str, model: str | None, ids: list[int], threads: int, d: Path, console,
                    role_items: int) -> None:
    """Part 2: every GGUF type of base + `adapter` in llama.cpp against iceburg-mlx's base + adapter."""
    import mlx.core as mx
    from rich.table import Table

    from iceburg_mlx.adapters import adapter_role
    from iceburg_mlx.eval.bench import BENCHES, load_items
    from iceburg_mlx.export import FuseOptions, fuse, imatrix
    from iceburg_mlx.templates import chat_prompt
    from iceburg_mlx.adapters import load_with_adapter

    ref = load_with_adapter(model, compute="float32", adapter=adapter)
    prompt = chat_prompt(ref.tokenizer, PROMPT)
    ours_greedy = mlx_greedy(ref.model, prompt, GREEDY)
    ours_top1 = np.array(mx.argmax(ref.model(mx.array([ids]))[0], axis=-1))
    role = adapter_role(adapter).get("name")
    data = imatrix.default_source()
    has_bench = role in BENCHES and data is not None and role_items > 0
    items = load_items(role, data, role_items) if has_bench else []
    files = {}
    for q in QUALITY_TYPES:
        t = time.perf_counter()
        res = fuse(FuseOptions(out=d / f"fused-{q}", model=model, adapter=adapter, to_gguf=True, quant=q))
        files[q] = (res.gguf.path, time.perf_counter() - t, res.provenance.get("imatrix"))
    floor_top1 = head_q8_0_top1(model, adapter, ids, ours_top1, threads, d)
    sim_head, sim_all = q8_runtime_top1(model, adapter, ids, ours_top1)
    table = Table(title=f"{adapter} fused into {ref.source.spec}: llama.cpp on each GGUF type vs iceburg-mlx "
                        f"(base + adapter, f32)")
    cols = ["type", "MiB", "fuse s", "imatrix", "ppl", "vs F16", "top-1 = ours", f"greedy = ours (of {GREEDY})"]
    if items:
        cols += [f"{role} format (of {len(items)})", f"{role} checker passes"]
    for col in cols:
        table.add_column(col, justify="left" if col == "type" else "right")
    verdicts = []
    rows = [(q.upper(), *files[q]) for q in files]
    if items:   # the base alone, as shipped: how much of the role behaviour is the adapter's
        rows.append((f"base ({ref.source.spec})", Path(ref.source.path), 0.0, None))
    ppl_f16 = None
    for label, path, secs, imx in rows:   # one llama.cpp load per file for all its figures
        q = label.lower()
        llm = open_llama(path, threads, max(1024, len(ids) + 8))
        cells = [label, f"{path.stat().st_size / 2**20:.1f}", f"{secs:.1f}" if secs else "-",
                 f"{imx['tokens']} tok" if imx else "-"]
        if q in files:
            logits = llama_logits(llm, ids)
            ppl = perplexity_of(logits, ids)
            ppl_f16 = ppl_f16 or ppl                       # F16 is the first row
            top1 = float(np.mean(np.argmax(logits, axis=-1) == ours_top1))
            same = leading_same(llama_greedy(llm, prompt, GREEDY), ours_greedy)
            dv = ppl / ppl_f16 - 1
            cells += [f"{ppl:.3f}", f"{dv:+.2%}", f"{top1:.1%}", str(same)]
        else:
            cells += ["", "", "", ""]
        if items:
            cells += [str(n) for n in role_bench(llm, ref.tokenizer, items)]
        table.add_row(*cells)
        if q == "f16":
            verdicts.append(f"F16 greedy tokens identical: {same} ({'OK' if same >= 32 else 'UNDER'} the 32 bar)")
        elif q == "q8_0":
            verdicts.append(f"Q8_0 top-1 agreement {top1:.1%} ({'OK' if top1 >= 0.98 else 'UNDER'} the 98% bar). "
                            f"What llama.cpp's Q8_0 runtime costs with exact weights: only the head's input "
                            f"rounded, {floor_top1:.1%} in llama.cpp ({sim_head:.1%} simulated in MLX); every "
                            f"product's input rounded, {sim_all:.1%} (simulated)")
        elif q in ("q4_0", "q4_1", "q4_k_m"):
            verdicts.append(f"{q.upper()} perplexity {dv:+.2%} vs F16 ({'OK' if abs(dv) < 0.05 else 'OUTSIDE'} "
                            f"the 5% bar)")
    console.print(table)
    for v in verdicts:
        console.print(v)


def main() -> None:
    require("llama_cpp")  # before any work: a missing peer is named at once
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model spec (default: the embedded SmolLM2)")
    ap.add_argument("--adapter", default=None,
                    help="trained adapter for part 2 (registry name or directory; default: oracle if registered)")
    ap.add_argument("--threads", type=int, default=2, help="threads for llama.cpp (quantize and eval)")
    ap.add_argument("--role-items", type=int, default=30,
                    help="eval items of the adapter's role answered by each file in part 2 (0: none)")
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    from iceburg_mlx.errors import AdapterError
    from iceburg_mlx.export import imatrix
    from iceburg_mlx.export.fusion import _vocab
    from iceburg_mlx.export.gguf_export import write_gguf
    from iceburg_mlx.models import load_model

    adapter = args.adapter
    if adapter is None:
        from iceburg_mlx.adapters import resolve_adapter_path

        try:
            resolve_adapter_path("oracle")
            adapter = "oracle"
        except AdapterError:
            adapter = None
    console = Console(width=150)
    with tempfile.TemporaryDirectory(prefix="iceburg-bench-export-") as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        loaded = load_model(args.model, compute="float32")
        load_s = time.perf_counter() - t
        vocab = _vocab(loaded)
        f16 = write_gguf(loaded.model, loaded.config, d / "model.F16.gguf", "f16", vocab)
        ours = write_gguf(loaded.model, loaded.config, d / "ours.Q4_K_M.gguf", "q4_k_m", vocab)
        t = time.perf_counter()
        cal = imatrix.calibration_ids(loaded.tokenizer)
        importance = imatrix.collect(loaded.model, cal.ids)
        cal_s = time.perf_counter() - t
        ours_imx = write_gguf(loaded.model, loaded.config, d / "ours-imatrix.Q4_K_M.gguf", "q4_k_m", vocab,
                              importance=importance)
        from_f16 = load_model(str(f16.path), compute="float32")
        ours_f16 = write_gguf(from_f16.model, from_f16.config, d / "ours-from-f16.Q4_K_M.gguf", "q4_k_m",
                              _vocab(from_f16))
        theirs_path = d / "llama.Q4_K_M.gguf"
        theirs_s = llama_quantize(f16.path, theirs_path, args.threads)

        ids = list(loaded.tokenizer.encode(TEXT))
        rows = []
        ppl_f16 = perplexity(f16.path, ids, args.threads)
        ppl_theirs = perplexity(theirs_path, ids, args.threads)
        for label, path, secs in (("F16, iceburg-mlx", f16.path, f16.seconds),
                                  ("Q4_K_M llama.cpp (from F16)", theirs_path, theirs_s),
                                  ("Q4_K_M ours (from F16)", ours_f16.path, ours_f16.seconds),
                                  ("Q4_K_M ours (fuse path, f32)", ours.path, ours.seconds),
                                  ("Q4_K_M ours + imatrix (fuse default)", ours_imx.path, cal_s + ours_imx.seconds)):
            ppl = perplexity(path, ids, args.threads) if path != f16.path else ppl_f16
            same, exact, total = compare(path, theirs_path)
            rows.append((label, path.stat().st_size / 2**20, secs, ppl, ppl / ppl_f16 - 1,
                         ppl / ppl_theirs - 1, f"{same}/{total}", f"{exact}/{total}"))

        table = Table(title=f"Q4_K_M export, {loaded.source.spec} ({len(ids)} tokens of held-out text; "
                            f"model load {load_s:.1f} s)")
        for col in ("file", "MiB", "seconds", "ppl", "vs F16", "vs llama.cpp", "same types", "same bytes"):
            table.add_column(col, justify="left" if col == "file" else "right")
        for label, mib, secs, ppl, dv16, dvl, same, exact in rows:
            table.add_row(label, f"{mib:.1f}", f"{secs:.2f}", f"{ppl:.3f}", f"{dv16:+.2%}", f"{dvl:+.2%}", same, exact)
        console.print(table)
        worst = max(abs(r[5]) for r in rows[1:4])
        console.print(f"our reference Q4_K_M perplexity within {worst:.2%} of llama.cpp's "
                      f"({'OK' if worst < 0.01 else 'OVER'} the 1% bar); llama.cpp quantize {theirs_s:.2f} s on "
                      f"{args.threads} threads, ours {ours_f16.seconds:.2f} s (NumPy, one process, includes writing)")
        console.print(f"with an importance matrix ({len(cal.ids)} calibration tokens, collected in {cal_s:.1f} s): "
                      f"{rows[4][5]:+.2%} vs llama.cpp's Q4_K_M, {rows[4][4]:+.2%} vs F16")
        if adapter:
            adapter_quality(adapter, args.model, ids, args.threads, d, console, args.role_items)
        else:
            console.print("part 2 skipped: no trained adapter (train one, or pass --adapter)")


if __name__ == "__main__":
    main()
