"""Evaluation: perplexity, role benchmarks, paired statistics."""
