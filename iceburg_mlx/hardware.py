"""What this machine is and what it can train: the logic behind `iceburg-mlx doctor`.

`recommend()` is a pure function of (parameter count, usable memory, backend) that the trainer
reuses for its defaults (the seeds' "M4 optimizer", made honest and testable).
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict, dataclass

GiB = 1024**3


@dataclass(frozen=True)
class DeviceInfo:
    mlx_version: str
    backend: str            # "metal" | "cuda" | "cpu"
    device_name: str
    memory_bytes: int       # Metal's recommended working set, else system RAM
    cpu_count: int


@dataclass(frozen=True)
class Recommendation:
    compute: str            # "float32" (dequantize for compute) | "quantized" (keep, QLoRA) | "native"
    batch_size: int
    lora_rank: int
    grad_checkpointing: bool
    max_seq_len: int
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def system_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * GiB


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> DeviceInfo:
    import mlx.core as mx

    backend, name, mem = "cpu", cpu_name(), system_memory_bytes()
    if mx.metal.is_available():
        backend = "metal"
        di = mx.device_info()
        name = str(di.get("device_name", "Apple GPU"))
        mem = int(di.get("max_recommended_working_set_size", mem))
    elif getattr(mx, "cuda", None) is not None and mx.cuda.is_available():
        backend = "cuda"
        try:
            di = mx.device_info()
            name = str(di.get("device_name", "CUDA GPU"))
            mem = int(di.get("memory_size", mem))
        except Exception:  # device_info is best effort on CUDA builds
            name = "CUDA GPU"
    return DeviceInfo(mx.__version__, backend, name, mem, os.cpu_count() or 1)


def recommend(n_params: int, memory_bytes: int, backend: str, quantized_source: bool,
              seq_len: int = 1024) -> Recommendation:
    """Batch size, LoRA rank and compute form for LoRA training of an `n_params` model.

    Memory model (bytes): weights (4/param in f32, ~0.56 in 4-bit) + activations per sequence
    (~ 34 * hidden-ish per token per layer, approximated as 24 bytes per parameter per 1k tokens
    divided by depth) — kept coarse on purpose and conservative: use at most 60% of memory.
    """
    budget = 0.6 * memory_bytes
    f32_weights = 4 * n_params
    q4_weights = 0.5625 * n_params
    # Activation cost per sequence of seq_len tokens, empirically ~2.3 GB for a 135M model at
    # batch 4 x 256 in f32 (FACTS: 2990 MiB peak incl. weights): ~1.1e-5 bytes/param/token scale.
    act_per_seq = max(64 * 2**20, int(n_params * seq_len * 0.016))
    reason = []
    if backend == "cpu":
        # On CPU, bf16/f16 and quantized matmuls do not use BLAS (3-6 GFLOP/s vs ~390 f32).
        if f32_weights + act_per_seq <= budget:
            compute = "float32"
            reason.append("CPU: f32 compute with weights dequantized (BLAS path; q4 LoRA ran ~25x slower)")
        else:
            compute = "quantized"
            reason.append("CPU: f32 weights do not fit in 60% of memory; keeping the base quantized (slow)")
    else:
        compute = "quantized" if (quantized_source or f32_weights > budget / 2) else "native"
        reason.append(f"{backend}: quantized base kept for QLoRA" if compute == "quantized"
                      else f"{backend}: weights as stored")
    weights = f32_weights if compute == "float32" else (q4_weights if compute == "quantized" else 2 * n_params)
    free = max(0.0, budget - weights)
    batch = int(max(1, min(16, free // act_per_seq)))
    batch = 1 << (batch.bit_length() - 1)  # a power of two
    checkpoint = batch < 2 and free < act_per_seq
    if n_params < 1e9:
        rank = 16
    elif n_params < 8e9:
        rank = 8
    else:
        rank = 4
    reason.append(f"batch {batch} of {seq_len}-token sequences fits {free / GiB:.1f} GiB after weights")
    return Recommendation(compute, batch, rank, checkpoint, seq_len, "; ".join(reason))


def is_linux_cpu() -> bool:
    return sys.platform.startswith("linux")
