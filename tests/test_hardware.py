"""Training advice is a pure function of model size, memory and backend."""

from iceburg_mlx.hardware import GiB, recommend


def test_cpu_prefers_f32_when_it_fits():
    r = recommend(135_000_000, 24 * GiB, "cpu", quantized_source=True)
    assert r.compute == "float32" and r.batch_size >= 4
    big = recommend(13_000_000_000, 24 * GiB, "cpu", quantized_source=True)
    assert big.compute == "quantized"


def test_metal_keeps_a_quantized_base_quantized():
    assert recommend(7_000_000_000, 16 * GiB, "metal", quantized_source=True).compute == "quantized"
    assert recommend(135_000_000, 16 * GiB, "metal", quantized_source=False).compute == "native"


def test_more_memory_never_means_a_smaller_batch():
    sizes = [recommend(1_000_000_000, m * GiB, "cpu", True).batch_size for m in (4, 8, 16, 32, 64)]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]
    for s in sizes:
        assert s & (s - 1) == 0  # powers of two


def test_rank_shrinks_with_model_size():
    ranks = [recommend(n, 64 * GiB, "metal", True).lora_rank for n in (1e8, 3e9, 3e10)]
    assert ranks == sorted(ranks, reverse=True)
