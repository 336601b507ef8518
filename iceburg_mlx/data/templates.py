"""Template detection: examples that share a skeleton with the topic words swapped.

The first ICEBURG models were trained on "The field of {TOPIC} has seen significant advances..."
and learned the template, not the knowledge. This module finds such clusters:

1. Each example (its assistant answers) is tokenised into lower-cased words and punctuation.
2. Its *skeleton* masks rare tokens: a token seen in fewer than `max(min_df, rel_df * N)` examples
   becomes ``*`` (runs collapse). Topic words are rare, a template's own words are frequent.
3. Candidates come from MinHash LSH over skeleton shingles; a candidate is confirmed only if
   the full token sequences align (difflib) over at least `min_aligned` of the longer one, so
   diverse prose that merely shares function words is not a template.
4. Each example joins the first confirmed cluster (greedy, in order); clusters of at least
   `min_cluster` examples are templates. The displayed skeleton keeps the representative's
   tokens that most members align with and shows the rest as ``{…}``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any

import numpy as np

from iceburg_mlx.data import minhash as mh
from iceburg_mlx.data.formats import assistant_text, record_text

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
SLOT = "{…}"


@dataclass(frozen=True)
class TemplateOptions:
    min_df: int = 3            # a token in fewer examples than this is a slot
    rel_df: float = 0.05       # ... or in fewer than this fraction of all examples
    threshold: float = 0.3     # LSH Jaccard threshold on skeleton shingles (candidates)
    min_aligned: float = 0.6   # share of the longer token sequence that must align
    min_cluster: int = 3       # a template needs at least this many examples
    max_tokens: int = 400      # examples are compared on their first max_tokens tokens
    k: int = 4
    num_perm: int = 64


@dataclass
class TemplateCluster:
    skeleton: str
    members: list[int] = field(default_factory=list)  # record indices

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class TemplateReport:
    records: int
    clusters: list[TemplateCluster]

    @property
    def in_templates(self) -> int:
        return sum(c.size for c in self.clusters)

    @property
    def fraction(self) -> float:
        return self.in_templates / self.records if self.records else 0.0

    def to_dict(self, max_clusters: int = 20) -> dict[str, Any]:
        return {
            "records": self.records,
            "template_fraction": round(self.fraction, 4),
            "clusters": [{"size": c.size, "skeleton": c.skeleton} for c in self.clusters[:max_clusters]],
        }


def tokenize(text: str, max_tokens: int = 400) -> list[str]:
    return [t.lower() for t in TOKEN_RE.findall(text[: max_tokens * 12])][:max_tokens]


def skeleton_tokens(tokens: list[str], df: Counter, cutoff: int) -> list[str]:
    out: list[str] = []
    for t in tokens:
        if df[t] >= cutoff:
            out.append(t)
        elif not out or out[-1] != "*":
            out.append("*")
    return out


def aligned_fraction(a: list[str], b: list[str]) -> float:
    """Tokens of the longer sequence that align with the other (difflib matching blocks)."""
    if not a or not b:
        return 0.0
    sm = SequenceMatcher(None, a, b, autojunk=False)
    matched = sum(blk.size for blk in sm.get_matching_blocks())
    return matched / max(len(a), len(b))


def _display(rep: list[str], others: list[list[str]]) -> str:
    """The representative's tokens kept where at least half the members align with them."""
    hits = np.zeros(len(rep), dtype=np.int64)
    for o in others:
        for blk in SequenceMatcher(None, rep, o, autojunk=False).get_matching_blocks():
            hits[blk.a: blk.a + blk.size] += 1
    need = max(1, math.ceil(len(others) / 2))
    out: list[str] = []
    for tok, h in zip(rep, hits):
        if h >= need:
            out.append(tok)
        elif not out or out[-1] != SLOT:
            out.append(SLOT)
    text = " ".join(out)
    return re.sub(r" ([.,;:!?)])", r"\1", text)


def _texts(records: Sequence[dict[str, Any]]) -> list[str]:
    out = []
    for r in records:
        t = assistant_text(r) if isinstance(r, dict) else ""
        out.append(t or (record_text(r) if isinstance(r, dict) else ""))
    return out


def template_report(records: Sequence[dict[str, Any]] | Sequence[str], options: TemplateOptions = TemplateOptions()) -> TemplateReport:
    """Cluster examples that share a skeleton; records may be dicts (any format) or plain strings."""
    from datasketch import LeanMinHash, MinHashLSH

    texts = [r if isinstance(r, str) else "" for r in records]
    if records and not isinstance(records[0], str):
        texts = _texts(records)  # type: ignore[arg-type]
    toks = [tokenize(t, options.max_tokens) for t in texts]
    n = len(toks)
    df: Counter = Counter()
    for t in toks:
        df.update(set(t))
    cutoff = max(options.min_df, math.ceil(options.rel_df * n))
    # the MinHash normaliser drops '*' and punctuation: spell them as words (q42 for '*')
    skels = [" ".join(w if w[0].isalnum() else f"q{ord(w[0])}" for w in skeleton_tokens(t, df, cutoff)) for t in toks]
    sigs = mh.signatures(skels, mh.ShingleConfig(k=options.k, unit="word", num_perm=options.num_perm))
    lsh = MinHashLSH(threshold=options.threshold, num_perm=options.num_perm)
    reps: list[int] = []
    members: dict[int, list[int]] = {}
    for i in range(n):
        if len(toks[i]) < 5:
            continue
        lean = LeanMinHash(seed=1, hashvalues=sigs[i], scheme=mh.SCHEME)
        cands = sorted(lsh.query(lean), key=lambda j: -mh.jaccard(sigs[reps[j]], sigs[i]))[:3]
        joined = False
        for c in cands:
            rep = reps[c]
            if aligned_fraction(toks[rep], toks[i]) >= options.min_aligned:
                members[rep].append(i)
                joined = True
                break
        if not joined:
            lsh.insert(len(reps), lean, check_duplication=False)
            reps.append(i)
            members[i] = [i]
    clusters = []
    for rep, mem in members.items():
        if len(mem) >= options.min_cluster:
            sample = [toks[j] for j in mem[1:21]]
            clusters.append(TemplateCluster(skeleton=_display(toks[rep], sample), members=mem))
    clusters.sort(key=lambda c: -c.size)
    return TemplateReport(records=n, clusters=clusters)
