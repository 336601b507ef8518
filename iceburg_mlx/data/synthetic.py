"""Generated data for tests, benchmarks and demos: unique prose-like records, planted near
duplicates (word swaps, a dropped word, punctuation and case changes) and the seeds' template
corpus ("The field of {TOPIC} has seen significant advances..."). Deterministic given a seed.
"""

from __future__ import annotations

import random
from typing import Any

_SYLLABLES = [a + b for a in "bcdfghjklmnprstvwz" for b in ("a", "e", "i", "o", "u", "ai", "ou", "er", "an", "il")]
FUNCTION_WORDS = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "with", "on", "by", "this"]

ROLES = ("surveyor", "dissident", "synthesist", "oracle")
TOPICS = [
    "quantum computing", "machine learning", "protein folding", "climate modeling", "gene editing",
    "dark matter", "fusion energy", "graph theory", "neuroscience", "cryptography", "robotics",
    "materials science", "epidemiology", "plate tectonics", "behavioral economics", "linguistics",
    "battery chemistry", "ocean acidification", "exoplanets", "immunology", "topology", "game theory",
    "photonics", "soil microbiology", "urban planning", "supply chains", "bioinformatics",
    "superconductivity", "reinforcement learning", "cognitive psychology", "volcanology", "astrobiology",
    "computational fluid dynamics", "synthetic biology", "quantum chemistry", "swarm robotics",
    "archaeology", "glaciology", "nanotechnology", "paleoclimate", "network science", "stem cells",
]
# Skeletons per role in the style the post-mortem quotes; {T} is the topic, {U} a second field.
TEMPLATES = {
    "surveyor": [
        "The field of {T} has seen significant advances in recent years. Core principles are now "
        "well-established, and researchers continue to explore new directions. Industrial applications "
        "are emerging, and the research community remains optimistic about {T}.",
        "Research on {T} spans theory and practice. Key findings in {T} include improved methods and "
        "broader adoption. Further work is needed to address remaining challenges.",
    ],
    "dissident": [
        "While {T} is often presented as a solved problem, there are important counterpoints to consider. "
        "Critics argue that the evidence for {T} is weaker than claimed, and alternative explanations "
        "deserve attention.",
        "The mainstream view of {T} may be overstated. Several assumptions underlying {T} have not been "
        "rigorously tested, and contradictory results exist.",
    ],
    "synthesist": [
        "Connecting {T} with {U} reveals interesting parallels. Both fields share underlying patterns, "
        "and insights from {U} could inform future work in {T}.",
        "A synthesis of {T} and {U} suggests new opportunities. The principles of {U} may apply to {T} "
        "in unexpected ways.",
    ],
    "oracle": [
        "Based on the available evidence, claims about {T} are partially supported. The core findings "
        "appear robust, but some details require further validation. Confidence: moderate.",
        "Assessment of {T}: the evidence is mixed. Some claims hold up under scrutiny while others do "
        "not. Overall verdict: plausible but unproven.",
    ],
}
PROMPTS = ["Research {T}.", "Challenge the consensus on {T}.", "Connect {T} with {U}.", "Assess the claims about {T}."]


def vocabulary(n: int = 20000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def sentence(rng: random.Random, vocab: list[str], n_words: int) -> str:
    words = [rng.choice(FUNCTION_WORDS) if rng.random() < 0.3 else vocab[int(rng.paretovariate(0.8)) % len(vocab)]
             if rng.random() < 0.2 else rng.choice(vocab) for _ in range(n_words)]
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def unique_text(rng: random.Random, vocab: list[str], lo: int = 40, hi: int = 160) -> str:
    """A prose-like paragraph of lo..hi words in sentences of 6..20 words."""
    target, parts, n = rng.randint(lo, hi), [], 0
    while n < target:
        k = rng.randint(6, 20)
        parts.append(sentence(rng, vocab, k))
        n += k
    return " ".join(parts)


def perturb(text: str, rng: random.Random) -> str:
    """A near duplicate: 1-2 adjacent word swaps, maybe a dropped word, punctuation and case changes."""
    words = text.split()
    for _ in range(rng.randint(1, 2)):
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    if rng.random() < 0.7 and len(words) > 3:
        del words[rng.randrange(len(words))]
    out = []
    for w in words:
        r = rng.random()
        if r < 0.05:
            w = w.upper()
        elif r < 0.10:
            w = w.capitalize()
        elif r < 0.15:
            w = w.rstrip(".") + ","
        elif r < 0.18:
            w = w.rstrip(".,") + "!"
        out.append(w)
    return " ".join(out)


def chatml(user: str, answer: str, rid: str, system: str | None = None, **extra: Any) -> dict[str, Any]:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
    ]
    return {"id": rid, "messages": msgs, **extra}


def near_duplicate_corpus(n_unique: int, n_dups: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
    """`n_unique` distinct records plus `n_dups` perturbed copies of some of them, shuffled.

    Returns (records, planted pairs as (original index, copy index) into records)."""
    rng = random.Random(seed)
    vocab = vocabulary(seed=seed)
    base = [chatml(unique_text(rng, vocab, 6, 16).rstrip(".") + "?", unique_text(rng, vocab), f"u{i}")
            for i in range(n_unique)]
    items = [(r, None) for r in base]
    for j in range(n_dups):
        src = rng.randrange(n_unique)
        r = base[src]
        copy = chatml(perturb(r["messages"][0]["content"], rng), perturb(r["messages"][1]["content"], rng), f"d{j}")
        items.append((copy, src))
    order = list(range(len(items)))
    rng.shuffle(order)
    pos = {old: new for new, old in enumerate(order)}
    records = [items[i][0] for i in order]
    pairs = [(pos[src], pos[i]) for i, (_, src) in enumerate(items) if src is not None]
    return records, pairs


def template_corpus(n: int, seed: int = 0, system: bool = True) -> list[dict[str, Any]]:
    """The post-mortem's template data: a few skeletons per role with topics swapped in."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        role = ROLES[i % len(ROLES)]
        t, u = rng.sample(TOPICS, 2)
        answer = rng.choice(TEMPLATES[role]).format(T=t, U=u)
        prompt = PROMPTS[ROLES.index(role)].format(T=t, U=u)
        sys = f"You are ICEBURG {role.capitalize()}." if system else None
        out.append(chatml(prompt, answer, f"{role}-{i}", system=sys, meta={"role": role, "topic": t}))
    return out
