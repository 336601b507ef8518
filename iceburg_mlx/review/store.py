"""The review session store: one SQLite file in WAL mode, safe for many raters writing at once.

Tables: `meta` (key -> JSON: schema, session id, bench, rubric, both sides, decoding),
`items` (the prompt, answer A, answer B, and `a_first`: whether Response 1 shows A),
`raters` (name, sha256 of the optional token, the rater's own item order) and `judgments`
(one row per rater and item: the choice as shown, "1" / "tie" / "2", the preference it means,
"A" / "tie" / "B", each side's rubric scores and a comment). A judgment is keyed by (rater, item),
so saving again replaces it: nothing is duplicated, and a rater can only ever write their own rows.

Every call opens its own connection (cheap for SQLite), so one store object can serve many
threads; writes are single statements or `BEGIN IMMEDIATE` transactions. A new session is
written to a temporary file and linked into place, so a crash never leaves half a session.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import random
import re
import secrets
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceburg_mlx.errors import ReviewError

SCHEMA = "iceburg-mlx/review/1"
CHOICES = {"1": "first", "tie": "tie", "2": "second"}      # what the page shows
RATER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,39}")
MAX_COMMENT = 2000

_TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (idx INTEGER PRIMARY KEY, item_id TEXT NOT NULL UNIQUE, messages TEXT NOT NULL,
                    answer_a TEXT NOT NULL, answer_b TEXT NOT NULL, a_first INTEGER NOT NULL);
CREATE TABLE raters (name TEXT PRIMARY KEY, token_sha256 TEXT UNIQUE, item_order TEXT NOT NULL,
                     created TEXT NOT NULL);
CREATE TABLE judgments (
    rater TEXT NOT NULL REFERENCES raters(name), idx INTEGER NOT NULL REFERENCES items(idx),
    choice TEXT NOT NULL CHECK (choice IN ('1', 'tie', '2')),
    preferred TEXT NOT NULL CHECK (preferred IN ('A', 'tie', 'B')),
    scores_a TEXT NOT NULL, scores_b TEXT NOT NULL, comment TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL, updated TEXT NOT NULL, PRIMARY KEY (rater, idx));
"""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_rater_name(name: str) -> str:
    if not isinstance(name, str) or not RATER_RE.fullmatch(name):
        raise ReviewError(f"rater name {str(name)[:50]!r}: use 1-40 letters, digits, spaces, '.', '_' or '-'")
    return name


@dataclass(frozen=True)
class Item:
    idx: int
    item_id: str
    messages: list[dict[str, Any]]      # the prompt both sides answered
    answer_a: str
    answer_b: str
    a_first: bool                       # Response 1 shows A

    def responses(self) -> tuple[str, str]:
        """(Response 1, Response 2) as the page shows them."""
        return (self.answer_a, self.answer_b) if self.a_first else (self.answer_b, self.answer_a)


@dataclass(frozen=True)
class Rater:
    name: str
    order: tuple[int, ...]              # item indices in this rater's order
    has_token: bool


@dataclass(frozen=True)
class Judgment:
    rater: str
    idx: int
    choice: str                         # "1" | "tie" | "2": as shown
    preferred: str                      # "A" | "tie" | "B": what it means
    scores_a: dict[str, int]
    scores_b: dict[str, int]
    comment: str = ""
    created: str = ""
    updated: str = ""

    def shown_scores(self, a_first: bool) -> dict[str, dict[str, int]]:
        """The scores keyed by position ("1", "2"), as the page shows them."""
        first, second = (self.scores_a, self.scores_b) if a_first else (self.scores_b, self.scores_a)
        return {"1": first, "2": second}


@dataclass
class NewItem:
    item_id: str
    messages: list[dict[str, Any]]
    answer_a: str
    answer_b: str
    a_first: bool = field(default=True)


def balanced_sides(n: int, seed: int) -> list[bool]:
    """`a_first` per item: half the items show A first (one more when n is odd), shuffled."""
    sides = [i % 2 == 0 for i in range(n)]
    random.Random(f"sides:{seed}").shuffle(sides)
    return sides


def create_store(path: str | os.PathLike, meta: dict[str, Any], items: Sequence[NewItem]) -> ReviewStore:
    """Write a new session file at `path` (refused if it exists); returns its store."""
    path = Path(path)
    if path.exists():
        raise ReviewError(f"{path}: already exists; choose another --out or remove it")
    if not items:
        raise ReviewError("a review session needs at least one item")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        con = sqlite3.connect(tmp)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_TABLES)
            with con:
                con.executemany("INSERT INTO meta VALUES (?, ?)",
                                [(k, json.dumps(v, ensure_ascii=False)) for k, v in {**meta, "schema": SCHEMA}.items()])
                con.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
                                [(i, it.item_id, json.dumps(it.messages, ensure_ascii=False), it.answer_a,
                                  it.answer_b, int(it.a_first)) for i, it in enumerate(items)])
        finally:
            con.close()
        try:
            os.link(tmp, path)            # no-clobber: fails if someone created `path` meanwhile
        except FileExistsError:
            raise ReviewError(f"{path}: already exists; choose another --out or remove it") from None
        except OSError:
            os.replace(tmp, path)        # a filesystem without hard links
    except sqlite3.Error as e:
        raise ReviewError(f"{path}: cannot write the session ({e})") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return ReviewStore(path)


class ReviewStore:
    """An existing session file. Thread-safe: each method uses its own connection."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ReviewError(f"{self.path}: no such review session")
        try:
            with self._connect() as con:
                rows = con.execute("SELECT key, value FROM meta").fetchall()
                self._items = self._read_items(con)
        except sqlite3.DatabaseError as e:
            raise ReviewError(f"{self.path}: not a review session ({e})") from None
        self.meta: dict[str, Any] = {k: json.loads(v) for k, v in rows}
        if self.meta.get("schema") != SCHEMA:
            raise ReviewError(f"{self.path}: not a review session of this version ({self.meta.get('schema')!r})")
        self.criteria: tuple[str, ...] = tuple(c["key"] for c in self.meta["rubric"])

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout = 30000")
            yield con
        finally:
            con.close()

    @staticmethod
    def _read_items(con: sqlite3.Connection) -> list[Item]:
        rows = con.execute("SELECT idx, item_id, messages, answer_a, answer_b, a_first FROM items ORDER BY idx")
        return [Item(i, iid, json.loads(m), a, b, bool(f)) for i, iid, m, a, b, f in rows]

    # -- items and raters ----------------------------------------------------------------------

    @property
    def items(self) -> list[Item]:
        return list(self._items)

    def item(self, idx: int) -> Item:
        return self._items[idx]

    def __len__(self) -> int:
        return len(self._items)

    def _order_for(self, name: str) -> list[int]:
        order = list(range(len(self._items)))
        random.Random(f"order:{self.meta['session']}:{name}").shuffle(order)
        return order

    def add_rater(self, name: str, token: str | None = None) -> Rater:
        """Register `name` (with a token, if given); ReviewError if the name is taken."""
        check_rater_name(name)
        digest = token_hash(token) if token else None
        try:
            with self._connect() as con:
                con.execute("INSERT INTO raters VALUES (?, ?, ?, ?)",
                            (name, digest, json.dumps(self._order_for(name)), _now()))
        except sqlite3.IntegrityError:
            raise ReviewError(f"rater {name!r} already exists in {self.path.name} (or the token is in use)") from None
        return Rater(name, tuple(self._order_for(name)), digest is not None)

    def invite(self, name: str) -> str:
        """Register `name` with a new random token and return the token (only its hash is stored).
        From then on the session is closed: every rater needs their token."""
        token = secrets.token_urlsafe(18)
        self.add_rater(name, token)
        return token

    def has_tokens(self) -> bool:
        with self._connect() as con:
            return con.execute("SELECT 1 FROM raters WHERE token_sha256 IS NOT NULL LIMIT 1").fetchone() is not None

    def rater(self, name: str, token: str | None = None, create: bool = False) -> Rater | None:
        """The rater `name` if `token` is theirs (or they have none and `token` is None).

        Returns None when the name is unknown (and not `create`) or the token does not match; with
        `create`, an unknown name is registered without a token (the open mode of a session)."""
        check_rater_name(name)
        query = "SELECT token_sha256, item_order FROM raters WHERE name = ?"
        with self._connect() as con:
            row = con.execute(query, (name,)).fetchone()
            if row is None and create:      # a write only for a new name, so readers never queue for the lock
                con.execute("INSERT OR IGNORE INTO raters VALUES (?, NULL, ?, ?)",
                            (name, json.dumps(self._order_for(name)), _now()))
                row = con.execute(query, (name,)).fetchone()
        if row is None:
            return None
        digest, order = row
        if (digest is None) != (token is None) or (digest is not None and token_hash(token) != digest):
            return None
        return Rater(name, tuple(json.loads(order)), digest is not None)

    def raters(self) -> list[str]:
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT name FROM raters ORDER BY created, name")]

    # -- judgments -----------------------------------------------------------------------------

    def _check_scores(self, scores: Any, which: str) -> dict[str, int]:
        lo, hi = self.meta.get("scale", [1, 5])
        if not isinstance(scores, dict) or set(scores) != set(self.criteria):
            missing = sorted(set(self.criteria) - set(scores)) if isinstance(scores, dict) else list(self.criteria)
            raise ReviewError(f"Response {which}: score every criterion ({', '.join(missing) or 'unknown keys'})")
        out = {}
        for k in self.criteria:
            v = scores[k]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ReviewError(f"Response {which}: '{k}' must be a whole number from {lo} to {hi}")
            out[k] = v
        return out

    def save_judgment(self, rater: Rater, idx: int, choice: str, scores: dict[str, Any],
                      comment: str = "") -> Judgment:
        """Store (or replace) `rater`'s judgment of item `idx`, given as shown: `choice` "1" / "tie"
        / "2" and `scores` {"1": {criterion: 1-5}, "2": {...}}; mapped to A / B here."""
        if choice not in CHOICES:
            raise ReviewError("choose Response 1, tie or Response 2")
        if not isinstance(scores, dict):
            raise ReviewError("scores must be an object {'1': {...}, '2': {...}}")
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
            raise ReviewError(f"the comment must be text of at most {MAX_COMMENT} characters")
        if not 0 <= idx < len(self._items):
            raise ReviewError(f"no item {idx}")
        first, second = self._check_scores(scores.get("1"), "1"), self._check_scores(scores.get("2"), "2")
        a_first = self._items[idx].a_first
        scores_a, scores_b = (first, second) if a_first else (second, first)
        preferred = "tie" if choice == "tie" else ("A" if (choice == "1") == a_first else "B")
        now = _now()
        with self._connect() as con:
            con.execute(
                "INSERT INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rater, idx) DO UPDATE SET "
                "choice = excluded.choice, preferred = excluded.preferred, scores_a = excluded.scores_a, "
                "scores_b = excluded.scores_b, comment = excluded.comment, updated = excluded.updated",
                (rater.name, idx, choice, preferred, json.dumps(scores_a), json.dumps(scores_b), comment.strip(),
                 now, now))
        return Judgment(rater.name, idx, choice, preferred, scores_a, scores_b, comment.strip(), now, now)

    def judgments(self, rater: str | None = None) -> list[Judgment]:
        """All judgments (or one rater's), in the order they were first made."""
        sql = "SELECT rater, idx, choice, preferred, scores_a, scores_b, comment, created, updated FROM judgments"
        args: tuple = ()
        if rater is not None:
            sql, args = sql + " WHERE rater = ?", (rater,)
        with self._connect() as con:
            rows = con.execute(sql + " ORDER BY created, rater, idx", args).fetchall()
        return [Judgment(r, i, c, p, json.loads(sa), json.loads(sb), cm, cr, up)
                for r, i, c, p, sa, sb, cm, cr, up in rows]

    def judgment(self, rater: str, idx: int) -> Judgment | None:
        found = [j for j in self.judgments(rater) if j.idx == idx]
        return found[0] if found else None

    def judged(self, rater: str) -> set[int]:
        with self._connect() as con:
            return {r[0] for r in con.execute("SELECT idx FROM judgments WHERE rater = ?", (rater,))}
