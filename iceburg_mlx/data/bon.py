"""Best-of-N preference pairs: sample N answers per prompt, score them, pair the best with the worst.

    pairs, report = best_of_n_pairs(prompts, sample, role="oracle", n=4, min_margin=0.1)

`sample(messages, n, seed)` returns n answers (the CLI passes one built on `generate_many` with
temperature ~0.8 and per-sample seeds). Each answer is scored by the quality scorer
(`iceburg_mlx.data.score`, with the role's rule); a prompt gives a pair when best - worst clears
`min_margin`. Hard negatives are added by perturbing the best answer: truncation, a refusal, an
inserted contradiction and a format violation (`PERTURBATIONS`); they are worse by construction,
so they are kept whatever the scorer says (their scores are recorded).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from iceburg_mlx.data.score import score_record
from iceburg_mlx.errors import ConfigError

Messages = list[dict[str, Any]]
REFUSAL = "I'm sorry, but I can't help with that request."
_HEADER = re.compile(r"^\s*(verdict|assessment|confidence)\s*:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_OPPOSITE = {"true": "false", "false": "true", "flawed": "holds", "holds": "flawed", "partly true": "false",
             "unverifiable": "true"}


def truncate(text: str, rng: np.random.Generator) -> str:
    """Cut mid-sentence at 30-60% of the words (no closing punctuation)."""
    words = text.split()
    if len(words) < 4:  # too short to cut between words: cut the characters
        return text.strip()[: max(1, len(text.strip()) // 2)]
    cut = int(len(words) * rng.uniform(0.3, 0.6))
    return " ".join(words[:max(2, cut)]).rstrip(".!?;:)\"'") + " and"


def refusal(text: str, rng: np.random.Generator) -> str:
    """A refusal in place of the answer."""
    return REFUSAL


def contradiction(text: str, rng: np.random.Generator) -> str:
    """Contradict the answer's own header line (Verdict/Assessment) or, without one, its first sentence."""
    m = _HEADER.search(text)
    if m and m.group(2).strip().lower() in _OPPOSITE:
        flipped = f"{m.group(1)}: {_OPPOSITE[m.group(2).strip().lower()]}"
        return text[: m.end()] + f"\n{flipped}" + text[m.end():]
    paras = text.split("\n\n")
    first = re.split(r"(?<=[.!?])\s", paras[0].strip(), maxsplit=1)[0]
    insert = f"On reflection, the opposite holds: it is not the case that {first[0].lower() + first[1:]}" \
        if first else "On reflection, the opposite of the above is true."
    at = int(rng.integers(1, len(paras) + 1))
    return "\n\n".join(paras[:at] + [insert] + paras[at:])


def format_violation(text: str, rng: np.random.Generator) -> str:
    """Drop the role's header lines and flatten the answer into one paragraph with a leaked turn marker."""
    body = _HEADER.sub("", text)
    flat = " ".join(body.split())
    return f"{flat}\nUser: thanks"


PERTURBATIONS: dict[str, Callable[[str, np.random.Generator], str]] = {
    "truncation": truncate, "refusal": refusal, "contradiction": contradiction, "format": format_violation,
}


def perturb(text: str, kind: str, rng: np.random.Generator) -> str:
    try:
        fn = PERTURBATIONS[kind]
    except KeyError:
        raise ConfigError(f"unknown perturbation {kind!r}; supported: {', '.join(PERTURBATIONS)}") from None
    return fn(text, rng)


@dataclass
class BonReport:
    prompts: int = 0
    samples: int = 0
    pairs: int = 0
    below_margin: int = 0
    hard_negatives: int = 0
    margins: list[float] = field(default_factory=list)


def _score(prompt: Messages, answer: str, role: str | None) -> float:
    return score_record({"messages": prompt + [{"role": "assistant", "content": answer}]}, role)[0]


def best_of_n_pairs(prompts: Sequence[Messages], sample: Callable[[Messages, int, int], list[str]],
                    role: str | None = None, n: int = 4, min_margin: float = 0.1,
                    hard_negatives: Sequence[str] = tuple(PERTURBATIONS), seed: int = 0,
                    on_prompt: Callable[[int, int], None] | None = None) -> tuple[list[dict], BonReport]:
    """Pairs {"messages", "chosen", "rejected", "source", "scores"} from N samples per prompt."""
    if n < 2:
        raise ConfigError(f"--bon: need at least 2 samples per prompt, got {n}")
    rep = BonReport()
    out: list[dict] = []
    for i, prompt in enumerate(prompts):
        answers = [a for a in sample(prompt, n, seed + 1000 * i) if a.strip()]
        rep.prompts += 1
        rep.samples += len(answers)
        if not answers:
            continue
        scores = [_score(prompt, a, role) for a in answers]
        best, worst = int(np.argmax(scores)), int(np.argmin(scores))
        margin = scores[best] - scores[worst]
        rep.margins.append(margin)
        if margin >= min_margin and answers[best].strip() != answers[worst].strip():
            out.append({"messages": prompt, "chosen": answers[best], "rejected": answers[worst], "source": "bon",
                        "scores": {"chosen": scores[best], "rejected": scores[worst]}})
            rep.pairs += 1
        else:
            rep.below_margin += 1
        rng = np.random.default_rng([seed, i])
        for kind in hard_negatives:
            bad = perturb(answers[best], kind, rng)
            if bad.strip() == answers[best].strip():
                continue
            out.append({"messages": prompt, "chosen": answers[best], "rejected": bad, "source": f"perturb:{kind}",
                        "scores": {"chosen": scores[best], "rejected": _score(prompt, bad, role)}})
            rep.hard_negatives += 1
        if on_prompt:
            on_prompt(i + 1, len(prompts))
    return out, rep
