"""prepare: the whole chain into a dataset directory and report.json."""

from __future__ import annotations

import json

import pytest

from iceburg_mlx.data import synthetic
from iceburg_mlx.data.io import iter_jsonl, write_jsonl
from iceburg_mlx.data.prepare import PrepareOptions, prepare
from iceburg_mlx.errors import DataError


def test_prepare_chain(tmp_path):
    recs, pairs = synthetic.near_duplicate_corpus(150, 30, seed=7)
    src = tmp_path / "in.jsonl"
    write_jsonl(src, recs)
    rep = prepare([src], tmp_path / "out", PrepareOptions(valid=0.2, curriculum="novel_first", min_quality=0.1))
    assert rep.input_records == 180 and rep.duplicates_removed >= 28
    train = [r for _, r in iter_jsonl(rep.files["train"])]
    valid = [r for _, r in iter_jsonl(rep.files["valid"])]
    assert len(train) + len(valid) == 180 - rep.duplicates_removed - rep.below_quality
    assert all("quality_score" in r and "emergence_score" in r and "id" in r for r in train + valid)
    em = [r["emergence_score"] for r in train]
    assert em == sorted(em, reverse=True)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"] == {"train": len(train), "valid": len(valid)} and report["options"]["curriculum"] == "novel_first"


def test_prepare_stops_on_invalid_data_and_templates(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"messages": [{"role": "user", "content": "q"}]}\n')
    with pytest.raises(DataError, match="no assistant turn"):
        prepare([src], tmp_path / "o")
    tpl = tmp_path / "tpl.jsonl"
    write_jsonl(tpl, synthetic.template_corpus(60))
    with pytest.raises(DataError, match="template skeleton"):
        prepare([tpl], tmp_path / "o2", PrepareOptions(max_template_fraction=0.3))
