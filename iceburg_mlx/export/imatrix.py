"""Importance matrices for quantization: how much each input column of each weight matters.

For every linear layer (and the output head) the importance of column j is the mean of x_j^2 over
the calibration tokens, x being the activations the weight multiplies, as llama.cpp's
`llama-imatrix` collects them. `quants.quantize(..., importance=...)` then minimises the error
weighted by it, so the columns that carry large activations are kept more exactly.

Calibration text comes from chat data (any format `data.formats` reads, rendered with the model's
chat template), plain-text records, or a .txt file; by default the role training sets shipped in
the repository's `data/`. Token ids are drawn reproducibly (seeded shuffle of the records) and run
in independent chunks of `n_ctx` tokens.

    cal = calibration_ids(tokenizer, None, n_tokens=2048)
    imp = collect(model, cal.ids)      # {"blk.0.attn_q.weight": (576,) float32, ...}
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iceburg_mlx.errors import DataError, ExportError
from iceburg_mlx.export.tensors import gguf_name

DEFAULT_TOKENS = 2048
DEFAULT_CTX = 512


def default_source() -> Path | None:
    """The repository's shipped datasets (`data/`), when this is a source checkout."""
    d = Path(__file__).resolve().parents[2] / "data"
    return d if any(d.glob("*/train.jsonl")) else None


@dataclass(frozen=True)
class Calibration:
    ids: list[int]
    source: str
    records: int

    def record(self) -> dict:
        digest = hashlib.sha256(np.asarray(self.ids, dtype="<i4").tobytes()).hexdigest()
        return {"source": self.source, "records": self.records, "tokens": len(self.ids), "ids_sha256": digest}


def _texts(path: Path, tokenizer) -> list[str]:
    from iceburg_mlx.data.formats import detect_format, to_messages
    from iceburg_mlx.data.io import iter_jsonl

    if path.suffix == ".txt":
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ExportError(f"{path}: cannot read calibration text ({e})") from e
        return [p for p in text.split("\n\n") if p.strip()]
    out = []
    try:
        for n, rec in iter_jsonl(path):
            try:
                if detect_format(rec) == "text":
                    out.append(str(rec["text"]))
                else:
                    out.append(tokenizer.apply_chat_template(to_messages(rec), tokenize=False))
            except DataError as e:
                raise ExportError(f"{path}:{n}: {e}") from e
    except DataError as e:
        raise ExportError(str(e)) from e
    return out


def calibration_ids(tokenizer, source: str | Path | None = None, n_tokens: int = DEFAULT_TOKENS,
                    seed: int = 0) -> Calibration:
    """Up to `n_tokens` token ids of calibration text from `source` (a .jsonl or .txt file, or a
    directory whose */train.jsonl files are used; default: the shipped role datasets)."""
    if n_tokens < 1:
        raise ExportError(f"calibration tokens must be positive, got {n_tokens}")
    path = Path(source).expanduser() if source is not None else default_source()
    if path is None:
        raise ExportError("no calibration data: pass a .jsonl or .txt file (the shipped data/ is not here)")
    if not path.exists():
        raise ExportError(f"{path}: calibration data not found")
    files = [path]
    if path.is_dir():
        files = sorted(path.glob("*/train.jsonl")) or sorted(path.glob("*.jsonl"))
    if not files:
        raise ExportError(f"{path}: no .jsonl files to calibrate on")
    texts = [t for f in files for t in _texts(f, tokenizer)]
    if not texts:
        raise ExportError(f"{path}: no calibration text")
    order = np.random.default_rng(seed).permutation(len(texts))
    ids: list[int] = []
    used = 0
    for i in order:
        ids += tokenizer.encode(texts[i], add_special_tokens=False)
        used += 1
        if len(ids) >= n_tokens:
            break
    return Calibration(ids=ids[:n_tokens], source=str(path), records=used)


class _Recorder:
    """Sums x^2 over the rows of the inputs each wrapped layer sees."""

    def __init__(self) -> None:
        self.sums: dict[str, object] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, x) -> None:
        import mlx.core as mx

        x = x.astype(mx.float32).reshape(-1, x.shape[-1])
        s = mx.sum(x * x, axis=0)
        self.sums[name] = s if name not in self.sums else self.sums[name] + s
        self.counts[name] = self.counts.get(name, 0) + x.shape[0]


def _wrapped(inner, name: str, rec: _Recorder):
    import mlx.nn as nn

    class Recording(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def __call__(self, x):
            rec.add(name, x)
            return self.inner(x)

    return Recording()


def _parent(model, path: str):
    obj = model
    parts = path.split(".")
    for p in parts[:-1]:
        obj = obj[int(p)] if p.isdigit() else getattr(obj, p)
    return obj, parts[-1]


def collect(model, ids: Sequence[int], n_ctx: int = DEFAULT_CTX) -> dict[str, np.ndarray]:
    """{GGUF tensor name: per-column mean of the squared inputs} over `ids`, run in chunks of
    `n_ctx`; the model is left as it was. Covers every linear layer with a GGUF name and the
    output head (the token embedding when it doubles as the head)."""
    import mlx.core as mx
    import mlx.nn as nn

    ids = np.asarray(ids, dtype=np.int32).reshape(-1)
    if ids.size == 0:
        raise ExportError("no calibration tokens")
    rec = _Recorder()
    swapped = []
    for path, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.QuantizedLinear)):
            continue
        try:
            name = gguf_name(f"{path}.weight")
        except ExportError:
            continue
        swapped.append((path, m, name))
    inner_model = getattr(model, "model", None)
    head = "output.weight" if getattr(model, "lm_head", None) is not None else "token_embd.weight"
    try:
        for path, m, name in swapped:
            parent, attr = _parent(model, path)
            setattr(parent, attr, _wrapped(m, name, rec))
        for s in range(0, len(ids), n_ctx):
            x = mx.array(ids[None, s:s + n_ctx])
            if callable(inner_model):   # mlx-lm's decoder: normed hidden states, no logits needed
                rec.add(head, inner_model(x))
            else:
                model(x)
            mx.eval(list(rec.sums.values()))
    finally:
        for path, m, _ in swapped:
            parent, attr = _parent(model, path)
            setattr(parent, attr, m)
    return {k: np.array(v / rec.counts[k], dtype=np.float32) for k, v in rec.sums.items()}


__all__ = ["DEFAULT_CTX", "DEFAULT_TOKENS", "Calibration", "calibration_ids", "collect", "default_source"]
