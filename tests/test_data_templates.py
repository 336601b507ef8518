"""Template detection: the seeds' template corpus is caught, diverse real prose is not."""

from __future__ import annotations

import importlib
import inspect

import pytest

from iceburg_mlx.data import synthetic
from iceburg_mlx.data.templates import aligned_fraction, template_report, tokenize

STDLIB = [
    "os", "json", "shutil", "subprocess", "collections", "functools", "itertools", "pathlib", "re", "argparse",
    "logging", "typing", "inspect", "dataclasses", "textwrap", "difflib", "asyncio", "email", "http.client",
    "urllib.request", "zipfile", "tarfile", "csv", "configparser", "unittest", "threading", "multiprocessing",
    "socket", "ssl", "decimal", "fractions", "statistics", "random", "datetime", "calendar", "heapq", "bisect",
    "string", "tempfile", "glob", "pickle", "copy", "pprint", "enum", "contextlib", "io", "codecs", "locale",
    "gettext", "optparse", "sqlite3", "xml.etree.ElementTree", "html.parser", "smtplib", "ftplib", "pdb",
    "doctest", "timeit", "tokenize", "ast", "dis", "platform", "shlex", "sched", "queue", "selectors",
    "mailbox", "mimetypes", "base64", "hashlib", "hmac", "secrets", "uuid", "ipaddress", "cmd", "traceback",
    "warnings", "weakref", "types", "operator", "math", "struct", "gzip", "bz2", "lzma", "zlib", "filecmp",
]


def stdlib_docstrings(min_words: int = 40) -> list[str]:
    """Distinct docstrings of at least min_words words from public stdlib objects (gathered at test time)."""
    docs, seen = [], set()
    for name in STDLIB:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        objs = [mod] + [getattr(mod, a, None) for a in dir(mod) if not a.startswith("_")]
        for obj in objs:
            cands = [obj] + ([v for k, v in vars(obj).items() if not k.startswith("_")] if inspect.isclass(obj) else [])
            for c in cands:
                try:
                    d = inspect.getdoc(c)
                except Exception:
                    continue
                if d and len(d.split()) >= min_words and d not in seen:
                    seen.add(d)
                    docs.append(d)
    return docs


@pytest.mark.parametrize("n,seed", [(40, 1), (200, 2), (600, 3)])
def test_seed_style_template_corpus_is_mostly_templated(n, seed):
    rep = template_report(synthetic.template_corpus(n, seed=seed))
    assert rep.records == n
    assert rep.fraction >= 0.9
    skeletons = " | ".join(c.skeleton for c in rep.clusters)
    assert "the field of {…} has seen significant advances" in skeletons
    assert all(topic not in skeletons for topic in ("quantum computing", "protein folding", "gene editing"))


def test_diverse_stdlib_docstrings_are_not_templated():
    docs = stdlib_docstrings()
    assert len(docs) > 500
    rep = template_report(docs)
    assert rep.fraction <= 0.10, [c.skeleton[:80] for c in rep.clusters[:5]]


def test_near_duplicates_of_prose_are_not_templates_unless_clustered():
    from iceburg_mlx.data.synthetic import near_duplicate_corpus

    recs, _ = near_duplicate_corpus(300, 0, seed=5)
    assert template_report(recs).fraction == 0.0


def test_aligned_fraction():
    a = tokenize("The field of quantum computing has seen significant advances.")
    b = tokenize("The field of gene editing has seen significant advances.")
    assert aligned_fraction(a, b) == pytest.approx(8 / 10)
    assert aligned_fraction(a, tokenize("Completely different words here")) < 0.2
