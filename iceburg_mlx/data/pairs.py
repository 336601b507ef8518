"""Preference pairs from logged feedback (see `collect`).

Rules, each giving ``{"messages": prompt, "chosen", "rejected", "source", ...}``:

- edit: the user's edited answer beats the model's original answer;
- thumbs: an answer thumbed up beats one thumbed down to the same prompt (same messages
  before the answer, compared after whitespace normalisation);
- regenerate: the answer kept after a regenerate beats every answer it replaced (in a chain
  A -> B -> C, C beats A and B; B is not "kept").
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from iceburg_mlx.data.collect import iter_events


def _prompt_key(prompt: list[dict[str, Any]]) -> tuple:
    return tuple((m.get("role"), " ".join(str(m.get("content", "")).split())) for m in prompt)


def _split(inter: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    msgs = inter["messages"]
    return [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]], msgs[-1]["content"]


def _pair(prompt: list[dict[str, Any]], chosen: str, rejected: str, source: str, **meta: Any) -> dict[str, Any]:
    return {"messages": prompt, "chosen": chosen, "rejected": rejected, "source": source, **meta}


def feedback_pairs(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """All preference pairs the logged feedback supports (deduplicated, chosen != rejected)."""
    inters: dict[str, dict[str, Any]] = {}
    feedback: list[dict[str, Any]] = []
    for p in paths:
        for _, ev in iter_events(p):
            if ev.get("type") == "interaction" and isinstance(ev.get("messages"), list) and ev["messages"]:
                inters[ev["id"]] = ev
            elif ev.get("type") == "feedback":
                feedback.append(ev)
    out: list[dict[str, Any]] = []
    votes: dict[str, str] = {}  # interaction -> last thumb
    replaced_by: dict[str, str] = {}
    for fb in feedback:
        iid, kind = fb.get("interaction"), fb.get("kind")
        if iid not in inters:
            continue
        if kind == "edit" and isinstance(fb.get("edited"), str):
            prompt, answer = _split(inters[iid])
            out.append(_pair(prompt, fb["edited"], answer, "edit", interaction=iid))
        elif kind in ("up", "down"):
            votes[iid] = kind
        elif kind == "regenerate" and fb.get("replacement") in inters:
            replaced_by[iid] = fb["replacement"]
    by_prompt: dict[tuple, dict[str, list[str]]] = {}
    for iid, kind in votes.items():
        prompt, _ = _split(inters[iid])
        by_prompt.setdefault(_prompt_key(prompt), {"up": [], "down": []})[kind].append(iid)
    for groups in by_prompt.values():
        for up in groups["up"]:
            for down in groups["down"]:
                prompt, chosen = _split(inters[up])
                out.append(_pair(prompt, chosen, _split(inters[down])[1], "thumbs", interaction=up, against=down))
    for old in replaced_by:
        kept, seen = replaced_by[old], {old}
        while kept in replaced_by and kept not in seen:  # follow the chain to the answer kept
            seen.add(kept)
            kept = replaced_by[kept]
        prompt, rejected = _split(inters[old])
        out.append(_pair(prompt, _split(inters[kept])[1], rejected, "regenerate", interaction=kept, against=old))
    unique, seen_pairs = [], set()
    for pr in out:
        key = (_prompt_key(pr["messages"]), pr["chosen"].strip(), pr["rejected"].strip())
        if pr["chosen"].strip() != pr["rejected"].strip() and key not in seen_pairs:
            seen_pairs.add(key)
            unique.append(pr)
    return unique
