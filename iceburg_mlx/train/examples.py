"""Conversations -> token ids with a mask on the assistant tokens (every assistant turn).

System, user and template tokens get mask 0; each assistant answer gets 1 up to and including its
end-of-turn token (the model must learn to stop), not the template's newline after it. The spans
are found by rendering prefixes of the conversation with the chat template, so any template works.
Shared by SFT, DPO (sequence log-probs) and eval (perplexity).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceburg_mlx.errors import DataError
from iceburg_mlx.templates import assistant_mask, with_system


@dataclass
class Example:
    ids: list[int]           # the whole conversation; inputs = ids[:-1], targets = ids[1:]
    mask: list[int]          # per token of ids; the loss uses mask[1:]
    source: str = ""         # file:line

    @property
    def n_supervised(self) -> int:
        return sum(self.mask[1:])


@dataclass
class BuildReport:
    examples: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_unsupervised: int = 0
    skipped_invalid: int = 0     # records the validator rejected, skipped under data.skip_invalid
    tokens: int = 0
    supervised_tokens: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "notes"}

    def nothing_usable(self, path: Path, what: str, max_seq_len: int) -> DataError:
        """The error for a file that left no example, as a sentence saying why."""
        seen = self.examples + self.dropped_overlong + self.dropped_unsupervised + self.skipped_invalid
        if seen == 0:
            return DataError(f"{path}: no usable {what}: the file holds no records")
        why = []
        if self.dropped_overlong:
            why.append(f"{self.dropped_overlong} longer than data.max_seq_len {max_seq_len} were dropped "
                       "(data.overlong: drop)")
        if self.dropped_unsupervised:
            why.append(f"{self.dropped_unsupervised} had no assistant token within the first {max_seq_len} "
                       "tokens to learn from")
        if self.skipped_invalid:
            why.append(f"{self.skipped_invalid} failed validation and were skipped (data.skip_invalid)")
        return DataError(f"{path}: no usable {what}: of {seen} records, " + "; ".join(why))


def build_examples(tokenizer, path: str | Path, max_seq_len: int, overlong: str = "truncate",
                   system_prompt: str | None = None, skip: Collection[int] = ()) -> tuple[list[Example], BuildReport]:
    """Read a JSONL file of conversations (any supported format) into training examples.

    Over-long examples (more than max_seq_len + 1 tokens) are truncated or dropped per `overlong`;
    an example left with no supervised token is dropped; the lines in `skip` (invalid records,
    see `data.validate.check_training_file`) are skipped. All are counted in the report.
    """
    from iceburg_mlx.data.formats import to_messages
    from iceburg_mlx.data.io import iter_jsonl

    if overlong not in ("truncate", "drop"):
        raise DataError(f"data.overlong must be 'truncate' or 'drop', got '{overlong}'")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    out, rep = [], BuildReport()
    for n, record in iter_jsonl(path):
        if n in skip:
            rep.skipped_invalid += 1
            continue
        where = f"{path}:{n}"
        try:
            messages = with_system(to_messages(record), system_prompt)
            ids, mask = assistant_mask(tokenizer, messages)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        if len(ids) > max_seq_len + 1:
            if overlong == "drop":
                rep.dropped_overlong += 1
                continue
            ids, mask = ids[: max_seq_len + 1], mask[: max_seq_len + 1]
            rep.truncated += 1
        ex = Example(ids, mask, where)
        if ex.n_supervised == 0:
            rep.dropped_unsupervised += 1
            continue
        out.append(ex)
        rep.tokens += len(ids) - 1
        rep.supervised_tokens += ex.n_supervised
    rep.examples = len(out)
    if not out:
        raise rep.nothing_usable(path, "training examples", max_seq_len)
    return out, rep
