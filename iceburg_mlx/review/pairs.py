"""Judged items as DPO preference pairs (data/README.md's format: messages, chosen, rejected).

One pair per judgment that prefers a side: ties are dropped, and so are items where both sides
gave the same answer (a pair needs two different answers). `messages` is the prompt both sides
answered; `provenance` says where the pair came from (the session, the rater, the item, which
model wrote each answer, when, and the rater's comment), so pairs can be filtered or weighted later.
"""

from __future__ import annotations

from typing import Any

from iceburg_mlx.review.store import ReviewStore


def dpo_pairs(store: ReviewStore) -> list[dict[str, Any]]:
    meta = store.meta
    sides = {k: meta["sides"][k]["spec"] for k in ("A", "B")}
    out = []
    for j in store.judgments():
        if j.preferred == "tie":
            continue
        item = store.item(j.idx)
        if item.answer_a.strip() == item.answer_b.strip():
            continue
        loser = "B" if j.preferred == "A" else "A"
        answer = {"A": item.answer_a, "B": item.answer_b}
        out.append({
            "id": f"review-{meta['session']}-{item.item_id}-{j.rater}",
            "messages": item.messages,
            "chosen": answer[j.preferred],
            "rejected": answer[loser],
            "provenance": {"source": "iceburg-mlx review", "session": meta["session"], "rater": j.rater,
                           "bench": meta["bench"], "item": item.item_id, "chosen_side": j.preferred,
                           "chosen_model": sides[j.preferred], "rejected_model": sides[loser],
                           "judged": j.updated, "comment": j.comment},
        })
    return out
