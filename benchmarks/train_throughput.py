"""LoRA SFT throughput: iceburg-mlx's trainer vs mlx-lm's `mlx_lm.tuner.train`, in one run.

    python benchmarks/train_throughput.py [--steps 12] [--batch 4] [--max-seq-len 512] [--rank 8]

Same process set-up for both, the same base (SmolLM2 as our loader prepares it: f32 on CPU), the
same data (data/oracle/train.jsonl, variable lengths), the same LoRA shape (rank r on all seven
projections of every layer, scale 2), AdamW at a constant lr, no clipping. Reported:
- non-pad tokens/s: positions processed (prompt and answer, no padding) per second of training,
  median over steps after the first two (compilation);
- peak memory (MLX allocator);
- final quality: the mean cross-entropy of each trained model on the same held-out answers
  (data/oracle/prefs.jsonl, chosen), computed by one function for both.
mlx-lm supervises only the final assistant message (`mask_prompt`), iceburg-mlx every assistant
turn; the data is mostly single-turn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import iceburg_mlx  # noqa: F401  (Linux CPU set-up before mlx.core)
import mlx.core as mx
import mlx.optimizers as optim
from peers import require  # noqa: E402  (benchmarks/peers.py)

REPO = Path(__file__).resolve().parents[1]
KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def held_out_loss(model, tok, max_seq_len: int) -> float:
    from iceburg_mlx.train import batching
    from iceburg_mlx.train.examples import build_examples
    from iceburg_mlx.train.methods.sft import sft_objective

    exs, _ = build_examples(tok, REPO / "data/oracle/prefs.jsonl", max_seq_len)
    tot = cnt = 0.0
    for b in batching.epoch_batches(exs, 4, 0, 0, False, max_seq_len):
        ls, n, _ = sft_objective(model, b.arrays(), b.gather, for_grad=False)
        mx.eval(ls, n)
        tot, cnt = tot + ls.item(), cnt + n.item()
    return tot / cnt


def run_ours(args, packing: bool) -> dict:
    from iceburg_mlx.models import load_model
    from iceburg_mlx.train import batching
    from iceburg_mlx.adapters import layers
    from iceburg_mlx.train.config import LoraConfig
    from iceburg_mlx.train.examples import build_examples
    from iceburg_mlx.train.loop import Callbacks, LoopConfig, train
    from iceburg_mlx.train.methods.sft import sft_objective

    loaded = load_model()
    mx.random.seed(0)
    layers.apply_lora(loaded.model, LoraConfig(rank=args.rank, alpha=2.0 * args.rank))
    exs, _ = build_examples(loaded.tokenizer, REPO / "data/oracle/train.jsonl", args.max_seq_len)
    opt = optim.AdamW(learning_rate=args.lr, weight_decay=0.0)
    rates = []
    cb = Callbacks(on_step=lambda info: rates.append(info.tokens_per_sec))
    mx.reset_peak_memory()
    it = batching.iterate(exs, args.batch, 0, packing, args.max_seq_len, loaded.tokenizer.pad_token_id or 0)
    train(loaded.model, opt, sft_objective, it, LoopConfig(steps=args.steps), callbacks=cb)
    peak = mx.get_peak_memory()
    return {"name": "iceburg-mlx" + (" (packed)" if packing else ""), "tok_s": statistics.median(rates[2:]),
            "peak_mib": peak / 2**20, "held_out_loss": held_out_loss(loaded.model, loaded.tokenizer,
                                                                     args.max_seq_len)}


def run_mlx_lm(args) -> dict:
    from mlx_lm.tuner import datasets as mds
    from mlx_lm.tuner import trainer as mtr
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from iceburg_mlx.models import load_model

    loaded = load_model()
    mx.random.seed(0)
    model = loaded.model
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": args.rank, "scale": 2.0, "dropout": 0.0,
                                                     "keys": KEYS})
    records = [json.loads(line) for line in (REPO / "data/oracle/train.jsonl").read_text().splitlines()]
    data = mds.CacheDataset(mds.ChatDataset(records, loaded.tokenizer._tokenizer, mask_prompt=True))
    stamps, lengths = [], []

    def counting_batches(*a, **kw):
        for batch, lens in mtr.iterate_batches(*a, **kw):
            lengths.append(int(mx.minimum(lens[:, 1], args.max_seq_len).sum().item()))
            yield batch, lens

    class CB(mtr.TrainingCallback):
        def on_train_loss_report(self, info):
            stamps.append(time.perf_counter())

    opt = optim.AdamW(learning_rate=args.lr, weight_decay=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        targs = mtr.TrainingArgs(batch_size=args.batch, iters=args.steps, steps_per_report=1,
                                 steps_per_eval=10**9, steps_per_save=10**9, max_seq_length=args.max_seq_len,
                                 adapter_file=str(Path(tmp) / "adapters.safetensors"))
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        mtr.train(model, opt, data, None, args=targs, iterate_batches=counting_batches, training_callback=CB())
        peak = mx.get_peak_memory()
    times = [b - a for a, b in zip([t0] + stamps[:-1], stamps)]
    rates = [n / t for n, t in zip(lengths, times)]
    return {"name": "mlx-lm tuner.train", "tok_s": statistics.median(rates[2:]), "peak_mib": peak / 2**20,
            "held_out_loss": held_out_loss(model, loaded.tokenizer, args.max_seq_len)}


def main() -> None:
    require("mlx_lm")  # before any work: a missing peer is named at once
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--no-packed", action="store_true", help="skip the packed iceburg-mlx row")
    args = ap.parse_args()
    rows = [run_mlx_lm(args), run_ours(args, packing=False)]
    if not args.no_packed:
        rows.append(run_ours(args, packing=True))
    from rich.console import Console
    from rich.table import Table

    ref = rows[0]
    t = Table(title=f"LoRA r{args.rank} SFT, batch {args.batch}, {args.steps} steps, max_seq_len {args.max_seq_len}")
    for c in ("trainer", "non-pad tok/s", "x mlx-lm", "peak MiB", "x mlx-lm mem", "held-out loss", "vs mlx-lm"):
        t.add_column(c, justify="left" if c == "trainer" else "right")
    for r in rows:
        t.add_row(r["name"], f"{r['tok_s']:.1f}", f"{r['tok_s'] / ref['tok_s']:.2f}", f"{r['peak_mib']:.0f}",
                  f"{r['peak_mib'] / ref['peak_mib']:.2f}", f"{r['held_out_loss']:.4f}",
                  f"{100 * (r['held_out_loss'] / ref['held_out_loss'] - 1):+.1f}%")
    Console().print(t)
    print(json.dumps({"rows": rows, "args": vars(args)}))


if __name__ == "__main__":
    main()
