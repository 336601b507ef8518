"""The one generation engine: prefill, pipelined decode, sampling, stop handling, statistics.

`stream()` yields text pieces as they decode. It is reused by `generate` and `chat` (which keeps
the KV cache across turns). `BatchGenerator` decodes many rows at once: each row has its own
prompt, sampling parameters, seed, stop strings and (through a hook) adapter; rows join and leave
between steps. It serves `generate_many` (eval, preference-pair sampling) and the server. Model
classes and KV caches come from mlx-lm; the loops are ours: the next step's graph is built and
queued with `async_eval` while the current tokens are being read back, so Python overhead
overlaps compute.
"""

from iceburg_mlx.generation.batch import BatchEvent, BatchGenerator, batchable, generate_many, sampler
from iceburg_mlx.generation.stream import (
    PREFILL_CHUNK,
    Generation,
    GenerationStats,
    Piece,
    generate,
    make_cache,
    prefill,
    stream,
)

__all__ = ["PREFILL_CHUNK", "BatchEvent", "BatchGenerator", "Generation", "GenerationStats", "Piece", "batchable",
           "generate", "generate_many", "make_cache", "prefill", "sampler", "stream"]
