"""Recipes: extends chains, --set overrides, coercion and one-line errors."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest
import yaml

import iceburg_mlx  # noqa: F401  (platform set-up before anything imports mlx)
from iceburg_mlx.errors import ConfigError
from iceburg_mlx.train import typed_yaml
from iceburg_mlx.train.config import (
    DEFAULT_TARGET_MODULES,
    Recipe,
    dump_recipe,
    load_recipe,
    recipe_fields,
    recipe_from_dict,
    recipe_to_dict,
    resolve_recipe_path,
)

REPO_RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


@pytest.fixture
def rdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "recipes"
    write(d, "base.yaml", """\
        model: {base: smollm2-135m-instruct}
        lora: {rank: 32, alpha: 64}
        optim: {lr: 2e-4}
        train: {steps: 200, batch_size: 4}
        schedule: {warmup: 10}
    """)
    return d


def test_shipped_base_recipe_loads():
    r = load_recipe(REPO_RECIPES / "base.yaml")
    assert r.model.base == "smollm2-135m-instruct"
    assert (r.lora.rank, r.lora.alpha, r.lora.layers) == (32, 64.0, -1)
    assert r.optim.lr == pytest.approx(2e-4) and isinstance(r.optim.lr, float)
    assert isinstance(r.optim.eps, float) and r.optim.eps == pytest.approx(1e-8)
    assert (r.train.steps, r.train.batch_size, r.data.max_seq_len) == (200, 4, 1024)
    assert (r.schedule.warmup, r.schedule.kind) == (10, "cosine")
    assert r.lora.target_modules == DEFAULT_TARGET_MODULES
    assert resolve_recipe_path("base", REPO_RECIPES) == (REPO_RECIPES / "base.yaml").resolve()


def test_defaults_and_help_for_every_field():
    r = recipe_from_dict({})
    assert r == Recipe()
    assert r.optim.lr == 1e-4 and r.optim.betas == (0.9, 0.999) and r.method.loss == "sigmoid"
    rows = recipe_fields()
    assert all(help_ for _, _, _, help_ in rows)
    assert {"lora.rank", "train.grad_checkpointing", "seed", "method.init_adapter"} <= {k for k, *_ in rows}
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seed = 3  # type: ignore[misc]


def test_extends_chain_and_merge_order(rdir):
    write(rdir, "mid.yaml", """\
        extends: base
        lora: {rank: 16}
        optim: {weight_decay: 0.01}
    """)
    write(rdir, "roles/oracle.yaml", """\
        extends: ../mid.yaml
        role: {name: oracle, system_prompt: "You are the oracle."}
        lora: {dropout: 0.05}
        optim: {lr: 1e-5}
    """)
    r = load_recipe("recipes/roles/oracle.yaml", ["lora.dropout=0.1", "lora.dropout=0.2"])
    assert r.role.name == "oracle"
    assert r.lora.rank == 16                        # mid overrides base
    assert r.lora.alpha == 64.0                     # from base
    assert r.lora.dropout == pytest.approx(0.2)     # last --set wins over the recipe
    assert r.optim.lr == 1e-5 and type(r.optim.lr) is float  # PyYAML reads 1e-5 as a string
    assert r.optim.weight_decay == pytest.approx(0.01)
    assert r.train.steps == 200 and r.schedule.warmup == 10
    assert r.optim.eps == 1e-8                       # dataclass default under everything


def test_set_overrides_are_typed(rdir):
    r = load_recipe("base", [
        "optim.lr=1e-5", "lora.layers=all", "lora.target_modules=q_proj,v_proj",
        "role.system_prompt=You are: terse", "optim.betas=[0.8, 0.95]", "data.format=chat",
        "optim.grad_clip=null", "train.grad_checkpointing=true", "seed=7", "role.name=123",
    ], recipes_dir=rdir)
    assert r.optim.lr == 1e-5 and isinstance(r.optim.lr, float)
    assert r.lora.layers == -1
    assert r.lora.target_modules == ("q_proj", "v_proj")
    assert r.role.system_prompt == "You are: terse"   # kept as text, not parsed as a mapping
    assert r.role.name == "123"                       # a string field keeps the raw text
    assert r.optim.betas == (0.8, 0.95)
    assert r.data.format == "chat" and r.optim.grad_clip is None
    assert r.train.grad_checkpointing is True and r.seed == 7


def test_epochs_replaces_inherited_steps(rdir):
    write(rdir, "ep.yaml", "extends: base\ntrain: {epochs: 2}\n")
    r = load_recipe("ep", recipes_dir=rdir)
    assert (r.train.steps, r.train.epochs) == (None, 2.0)
    r = load_recipe("ep", ["train.steps=50"], recipes_dir=rdir)
    assert (r.train.steps, r.train.epochs) == (50, None)
    write(rdir, "both.yaml", "extends: base\ntrain: {epochs: 2, steps: 10}\n")
    with pytest.raises(ConfigError, match=r"both\.yaml: train\.steps: set exactly one"):
        load_recipe("both", recipes_dir=rdir)


def test_unknown_key_did_you_mean(rdir):
    write(rdir, "oracle.yaml", "extends: base\nlora:\n  rnak: 4\n")
    with pytest.raises(ConfigError) as e:
        load_recipe("oracle", recipes_dir=rdir)
    assert str(e.value) == "recipes/oracle.yaml: lora.rnak: unknown key (did you mean 'rank'?)"
    with pytest.raises(ConfigError, match=r"^--set: optim\.lrr: unknown key \(did you mean 'lr'\?\)$"):
        load_recipe("base", ["optim.lrr=1"], recipes_dir=rdir)
    with pytest.raises(ConfigError, match=r"^--set: 'optim\.lr': expected key.sub=value$"):
        load_recipe("base", ["optim.lr"], recipes_dir=rdir)
    write(rdir, "top.yaml", "lorra: {rank: 4}\n")
    with pytest.raises(ConfigError, match=r"recipes/top\.yaml: lorra: unknown key \(did you mean 'lora'\?\)"):
        load_recipe("top", recipes_dir=rdir)


@pytest.mark.parametrize("body, message", [
    ("train: {batch_size: four}", "recipes/bad.yaml: train.batch_size: expected an integer, got 'four'"),
    ("data: {packing: 3}", "recipes/bad.yaml: data.packing: expected true or false, got 3"),
    ("model: {compute_dtype: f32}", "recipes/bad.yaml: model.compute_dtype: must be one of 'auto', "
                                    "'float32', 'bfloat16', 'float16', 'quantized', got 'f32'"),
    ("optim: {betas: [0.9]}", "recipes/bad.yaml: optim.betas: expected a list of 2 values, got [0.9]"),
    ("lora: 4", "recipes/bad.yaml: lora: expected a mapping of lora.* keys, got 4"),
    ("model: {base: 7}", "recipes/bad.yaml: model.base: expected a string, got 7"),
    ("lora: {dropout: 1.5}", "recipes/bad.yaml: lora.dropout: must be in [0, 1), got 1.5"),
    ("schedule: {warmup: -5}", "recipes/bad.yaml: schedule.warmup: must be >= 0, got -5"),
    ("extends: nosuch", "recipes/bad.yaml: extends: nosuch: recipe not found"),
    ("- a\n- b", "recipes/bad.yaml: a recipe must be a mapping of sections, got list"),
])
def test_wrong_type_or_value_one_line(rdir, body, message):
    write(rdir, "bad.yaml", ("extends: base\n" if not body.startswith(("extends", "-")) else "") + body + "\n")
    with pytest.raises(ConfigError) as e:
        load_recipe("bad", recipes_dir=rdir)
    assert str(e.value) == message
    assert "\n" not in str(e.value)


def test_error_names_the_layer_that_set_the_value(rdir):
    # the child's bad value is blamed on the child, the --set one on --set
    write(rdir, "w.yaml", "extends: base\nlora: {dropout: 1.5}\n")
    with pytest.raises(ConfigError, match=r"^recipes/w\.yaml: lora\.dropout"):
        load_recipe("w", recipes_dir=rdir)
    with pytest.raises(ConfigError, match=r"^--set: lora\.rank: must be >= 1, got 0$"):
        load_recipe("base", ["lora.rank=0"], recipes_dir=rdir)


def test_yaml_syntax_error_reports_line(rdir):
    write(rdir, "broken.yaml", "extends: base\nlora:\n  rank: 4\n  alpha: [1, 2\noptim: {lr: 1}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe("broken", recipes_dir=rdir)
    msg = str(e.value)
    assert msg.startswith("recipes/broken.yaml:5:") and "YAML syntax error" in msg


def test_extends_cycle_detected(rdir):
    write(rdir, "a.yaml", "extends: b\nseed: 1\n")
    write(rdir, "b.yaml", "extends: c.yaml\n")
    write(rdir, "c.yaml", "extends: a\n")
    with pytest.raises(ConfigError, match=r"extends cycle: recipes/a\.yaml -> recipes/b\.yaml -> "
                                          r"recipes/c\.yaml -> recipes/a\.yaml"):
        load_recipe("a", recipes_dir=rdir)
    write(rdir, "self.yaml", "extends: self\n")
    with pytest.raises(ConfigError, match="extends cycle"):
        load_recipe("self", recipes_dir=rdir)


def test_missing_recipe(rdir):
    with pytest.raises(ConfigError, match=r"^nope: recipe not found"):
        load_recipe("nope", recipes_dir=rdir)


def test_round_trip_through_dict_and_yaml(rdir):
    r = load_recipe("base", ["train.epochs=1.5", "lora.dora=true", "method.name=dpo",
                             "method.loss=ipo", "data.overlong=drop"], recipes_dir=rdir)
    d = recipe_to_dict(r)
    assert d["optim"]["betas"] == [0.9, 0.999] and d["lora"]["target_modules"] == list(DEFAULT_TARGET_MODULES)
    assert yaml.safe_load(dump_recipe(r)) == d
    assert recipe_from_dict(yaml.safe_load(dump_recipe(r))) == r


def test_preference_loss_names_match_registry():
    import typing

    from iceburg_mlx.train.config import MethodConfig
    from iceburg_mlx.train.losses import PREFERENCE_LOSSES
    allowed = typing.get_args(typed_yaml.type_hints(MethodConfig)["loss"])
    assert set(allowed) == set(PREFERENCE_LOSSES)


def test_removed_and_unknown_method_keys_are_one_line(rdir):
    from iceburg_mlx.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.curriculum: removed: training never applied it"):
        load_recipe("base", ["data.curriculum=weighted"], recipes_dir=rdir)
    with pytest.raises(ConfigError, match=r"method.name: 'grpoo' is not a training method \(available: dpo, sft"):
        load_recipe("base", ["method.name=grpoo"], recipes_dir=rdir)
