"""The review page in a real browser: Debian's headless chromium driven by Playwright.

A rater rates 5 items with the mouse and 5 with the keyboard, reloading mid-session twice; the page
resumes where they stopped, the store and the report read back exactly those judgments, and no
model name ever appears in the page. Set ICEBURG_MLX_SCREENSHOTS=DIR to keep the screenshot.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from iceburg_mlx.review.app import BackgroundReviewServer
from iceburg_mlx.review.pairs import dpo_pairs
from iceburg_mlx.review.report import analyze
from iceburg_mlx.review.store import ReviewStore

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MOUSE_CHOICES = ["1", "2", "tie", "2", "1"]
KEYBOARD_CHOICES = ["2", "1", "1", "tie", "2"]
KEY_FOR = {"1": "ArrowLeft", "2": "ArrowRight", "tie": "t"}


@pytest.fixture
def browser_page():
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH: install Debian's chromium (scripts/setup.sh does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        yield page
        browser.close()


def score(pos: int, k: int, side: str) -> int:
    return 1 + (pos + 2 * k + int(side)) % 5


def model_names(store: ReviewStore) -> list[str]:
    names = [store.meta["model"]["spec"], Path(store.meta["model"]["path"]).name]
    for side in store.meta["sides"].values():
        names += [side["spec"], side["adapter"]]
    return [n for n in names if n and n != "base"]


def test_rate_ten_items_with_mouse_and_keyboard_reload_and_report(review_session, browser_page, tmp_path):
    from playwright.sync_api import expect

    path = tmp_path / "session.db"
    shutil.copy(review_session.store.path, path)
    store = ReviewStore(path)
    crit = store.criteria
    names = model_names(store)
    assert any("oracle@" in n for n in names)
    page = browser_page
    sent: dict[int, dict] = {}     # position -> what the rater entered

    def blind():
        html = page.content()
        leaked = [n for n in names if n in html]
        assert not leaked, leaked

    def at(pos: int, done: int):
        expect(page.locator("#pos")).to_have_text(f"{pos + 1} of {len(store)}")
        expect(page.locator("#progress-text")).to_have_text(f"{done} of {len(store)} rated")
        blind()

    with BackgroundReviewServer(store) as srv:
        page.goto(srv.url + "/")
        expect(page.locator("#login")).to_be_visible()
        blind()
        page.fill("#name", "alice")
        page.click("#login button[type=submit]")
        for pos, choice in enumerate(MOUSE_CHOICES):
            at(pos, pos)
            for k, c in enumerate(crit):
                for side in "12":
                    page.click(f'td.cell[data-cell="{side}-{c}"] label.pill[data-v="{score(pos, k, side)}"]')
            page.click(f'label.choice:has(input[value="{choice}"])')
            comment = "first is clearer" if pos == 1 else ""
            if comment:
                page.click("#comment")
                page.keyboard.type(comment)
            sent[pos] = {"choice": choice, "comment": comment,
                         "scores": {s: {c: score(pos, k, s) for k, c in enumerate(crit)} for s in "12"}}
            page.click("#save")
            if pos == 2:                                   # mid-session: reload, the page resumes
                at(3, 3)
                page.reload()
                expect(page.locator("#login")).to_be_hidden()
        for i, choice in enumerate(KEYBOARD_CHOICES):
            pos = len(MOUSE_CHOICES) + i
            at(pos, pos)
            for k, c in enumerate(crit):
                for side in "12":
                    page.keyboard.press(str(score(pos, k, side)))
            page.keyboard.press(KEY_FOR[choice])
            comment = "tie: both wrong" if choice == "tie" else ""
            if comment:
                page.keyboard.press("c")
                page.keyboard.type(comment)
                page.keyboard.press("Escape")
            sent[pos] = {"choice": choice, "comment": comment,
                         "scores": {s: {c: score(pos, k, s) for k, c in enumerate(crit)} for s in "12"}}
            if i == 3:
                shot = page.screenshot(path=str(tmp_path / "review-page.png"), full_page=True)
                assert shot[:8] == b"\x89PNG\r\n\x1a\n"
                if os.environ.get("ICEBURG_MLX_SCREENSHOTS"):
                    shutil.copy(tmp_path / "review-page.png", Path(os.environ["ICEBURG_MLX_SCREENSHOTS"]) / "review-page.png")
            page.keyboard.press("Enter")
            if i == 1:
                at(pos + 1, pos + 1)
                page.reload()
        at(10, 10)
        # the keyboard's P goes back to the previous item, shown with the rater's own judgment
        page.keyboard.press("p")
        at(9, 10)
        expect(page.locator('input[name="choice"][value="2"]')).to_be_checked()

    rater = store.rater("alice")
    got = {rater.order.index(j.idx): j for j in store.judgments("alice")}
    assert sorted(got) == list(range(10)) and len(store.judgments()) == 10
    for pos, want in sent.items():
        j = got[pos]
        item = store.item(j.idx)
        assert (j.choice, j.comment, j.shown_scores(item.a_first)) == (want["choice"], want["comment"], want["scores"])
    record = analyze(store)
    expected = Counter("tie" if w["choice"] == "tie" else ("A" if (w["choice"] == "1") == store.item(rater.order[p]).a_first else "B")
                       for p, w in sent.items())
    prefs = record["preferences"]
    assert (prefs["n"], prefs["a"], prefs["ties"], prefs["b"]) == (10, expected["A"], expected["tie"], expected["B"])
    assert (record["position"]["first"], record["position"]["second"]) == (4, 4)
    first_crit = crit[0]
    a_scores = [sent[p]["scores"]["1" if store.item(rater.order[p]).a_first else "2"][first_crit] for p in sent]
    assert record["criteria"][0]["a"]["mean"] == pytest.approx(np.mean(a_scores), abs=1e-4)
    assert sorted(c["comment"] for c in record["comments"]) == ["first is clearer", "tie: both wrong"]
    assert len(dpo_pairs(store)) == 8 - sum(store.item(rater.order[p]).answer_a == store.item(rater.order[p]).answer_b
                                            for p, w in sent.items() if w["choice"] != "tie")
