"""Benchmark our Q4_K_M export against llama.cpp's own quantizer on SmolLM2-135M-Instruct.

In one run: export the embedded default (a Q4_1 GGUF) as F16 with iceburg-mlx; quantize it to
Q4_K_M twice, with `iceburg-mlx`'s exporter (from the loaded weights, as `iceburg-mlx fuse` does,
and again from the F16 file, the input llama.cpp gets) and with `llama_cpp.llama_model_quantize`
from our F16 file; time both quantizers; compare tensor types and bytes; and measure each file's
perplexity in llama.cpp on the same held-out English text. Prints a rich table.
Run it with `nice`: `nice -n 10 python benchmarks/export.py` (about a minute on 2 cores).
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


def perplexity(path: Path, ids: list[int], threads: int) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=max(512, len(ids) + 8), n_threads=threads,
                          verbose=False)
    llm.eval(ids)
    z = np.array(llm.scores[:len(ids)], dtype=np.float64)[:-1]
    m = z.max(-1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(-1)) + m[:, 0]
    return math.exp(float(np.mean(lse - z[np.arange(len(ids) - 1), ids[1:]])))


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model spec (default: the embedded SmolLM2)")
    ap.add_argument("--threads", type=int, default=2, help="threads for llama.cpp (quantize and eval)")
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    from iceburg_mlx.export.fusion import _vocab
    from iceburg_mlx.export.gguf_export import write_gguf
    from iceburg_mlx.models import load_model

    console = Console(width=150)
    with tempfile.TemporaryDirectory(prefix="iceburg-bench-export-") as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        loaded = load_model(args.model, compute="float32")
        load_s = time.perf_counter() - t
        vocab = _vocab(loaded)
        f16 = write_gguf(loaded.model, loaded.config, d / "model.F16.gguf", "f16", vocab)
        ours = write_gguf(loaded.model, loaded.config, d / "ours.Q4_K_M.gguf", "q4_k_m", vocab)
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
                                  ("Q4_K_M ours (fuse path, f32)", ours.path, ours.seconds)):
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
    worst = max(abs(r[5]) for r in rows[1:])
    console.print(f"our Q4_K_M perplexity within {worst:.2%} of llama.cpp's ({'OK' if worst < 0.01 else 'OVER'} "
                  f"the 1% bar); llama.cpp quantize {theirs_s:.2f} s on {args.threads} threads, ours "
                  f"{ours_f16.seconds:.2f} s (NumPy, one process, includes writing)")


if __name__ == "__main__":
    main()
