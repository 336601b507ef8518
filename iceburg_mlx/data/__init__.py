"""Data pipeline: formats, validation, dedup, scoring, splits (issue 5)."""
