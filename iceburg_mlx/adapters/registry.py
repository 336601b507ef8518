"""The adapter registry: finished adapters as `<adapters-dir>/<role>/<version>/`, versions 1, 2, 3, ...

An entry is an mlx-lm adapter directory (`adapters.safetensors` + `adapter_config.json`, so
`mlx_lm.generate --adapter-path <entry>` loads it) plus what the run left beside it:
`recipe.yaml`, `metrics.jsonl` (lines like {"step": 10, "train_loss": ..} / {"step": 10,
"val_loss": ..}), `provenance.json` (read here: "base", "created") and, after
`iceburg-mlx eval --out <entry>`, `eval.json`.

`publish` stages a copy in `<role>/.staging-<uuid>/` and, holding an exclusive `flock` on
`<adapters-dir>/.lock`, renames it to max(version) + 1: concurrent trainings get distinct
versions and readers never see a half-written entry. `remove` renames the entry to a trash name
before deleting it. Names are `role` (the newest version) or `role@N`; a spec holding "/" or
naming an existing directory is a path, not a name. This module does not import MLX.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iceburg_mlx.adapters.files import (
    CONFIG_FILE,
    EVAL_FILE,
    METRICS_FILE,
    PROVENANCE_FILE,
    RECIPE_FILE,
    WEIGHTS_FILE,
    check_dir,
    read_json,
)
from iceburg_mlx.errors import AdapterError, IceburgError

ENV_VAR = "ICEBURG_MLX_ADAPTERS"
LOCK_FILE = ".lock"
ROLE_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
NAME_RE = re.compile(r"(?P<role>[a-z0-9][a-z0-9_-]*)(?:@(?P<version>[0-9]+))?")
_VERSION_RE = re.compile(r"[1-9][0-9]*")


@dataclass(frozen=True)
class AdapterRef:
    role: str
    version: int
    path: Path

    @property
    def name(self) -> str:
        return f"{self.role}@{self.version}"


@dataclass(frozen=True)
class MetricsSummary:
    """What metrics.jsonl says; every field None when absent."""

    steps: int | None = None
    final_train_loss: float | None = None
    best_val_loss: float | None = None
    best_val_step: int | None = None
    lines: int = 0


@dataclass(frozen=True)
class AdapterInfo:
    role: str
    version: int
    path: Path
    created: _dt.datetime
    base: str | None = None
    metrics: MetricsSummary = field(default_factory=MetricsSummary)
    evals: dict[str, float] = field(default_factory=dict)   # bench -> accuracy of the adapter
    problems: tuple[str, ...] = ()                          # files present but unreadable

    @property
    def name(self) -> str:
        return f"{self.role}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {"name": self.name, "role": self.role, "version": self.version, "path": str(self.path),
                "created": self.created.isoformat(timespec="seconds"), "base": self.base, "steps": m.steps,
                "final_train_loss": m.final_train_loss, "best_val_loss": m.best_val_loss,
                "best_val_step": m.best_val_step, "eval": dict(self.evals), "problems": list(self.problems)}


def default_adapters_dir() -> Path:
    """$ICEBURG_MLX_ADAPTERS if set, else ./adapters (relative to the current directory)."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.cwd() / "adapters"


def adapters_root(adapters_dir: str | os.PathLike | None = None) -> Path:
    """`adapters_dir` if given, else the default."""
    return Path(adapters_dir).expanduser() if adapters_dir is not None else default_adapters_dir()


def check_role(role: str) -> str:
    if not isinstance(role, str) or not ROLE_RE.fullmatch(role):
        raise AdapterError(f"bad adapter role {role!r}: use lowercase letters, digits, '-' and '_' "
                           "(starting with a letter or digit)")
    return role


def parse_name(spec: str) -> tuple[str, int | None] | None:
    """`oracle` -> ("oracle", None), `oracle@3` -> ("oracle", 3); None if `spec` is not name-shaped."""
    m = NAME_RE.fullmatch(spec)
    if m is None:
        return None
    return m["role"], int(m["version"]) if m["version"] is not None else None


def _versions(role_dir: Path) -> list[int]:
    try:
        names = os.listdir(role_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n) for n in names if _VERSION_RE.fullmatch(n))


def roles(adapters_dir: str | os.PathLike | None = None) -> list[str]:
    """Roles that have at least one version."""
    root = adapters_root(adapters_dir)
    try:
        names = sorted(os.listdir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [n for n in names if ROLE_RE.fullmatch(n) and _versions(root / n)]


def describe(adapters_dir: str | os.PathLike | None = None) -> str:
    """One line naming what the registry holds, for error messages."""
    root = adapters_root(adapters_dir)
    have = roles(root)
    if not have:
        return f"the registry {root} is empty"
    return f"registry {root} has: " + ", ".join(f"{r} ({_fmt_versions(_versions(root / r))})" for r in have)


def _fmt_versions(versions: list[int]) -> str:
    return ", ".join(map(str, versions)) or "none"


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Exclusive advisory lock on <root>/.lock (blocks until held)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def publish(src_dir: str | os.PathLike, role: str, adapters_dir: str | os.PathLike | None = None,
            move: bool = False) -> AdapterRef:
    """Copy (or move) the finished adapter directory `src_dir` into `<role>/<next version>/`."""
    check_role(role)
    src = Path(src_dir).expanduser()
    check_dir(src)
    root = adapters_root(adapters_dir)
    role_dir = root / role
    try:
        role_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AdapterError(f"{role_dir}: cannot create ({e.strerror or e})") from None
    staging = role_dir / f".staging-{uuid.uuid4().hex}"
    renamed = False
    try:
        if move and not src.is_symlink():
            try:
                os.rename(src, staging)
                renamed = True
            except OSError:  # another filesystem: copy, delete the source once published
                pass
        if not renamed:
            shutil.copytree(src, staging)
        with _locked(root):
            version = max(_versions(role_dir), default=0) + 1
            os.rename(staging, role_dir / str(version))
    except BaseException as e:
        if renamed:
            with contextlib.suppress(OSError):
                os.rename(staging, src)
        else:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError):
            raise AdapterError(f"cannot publish {src} as {role}: {e.strerror or e}") from None
        raise
    if move and not renamed:
        shutil.rmtree(src, ignore_errors=True)
    return AdapterRef(role, version, role_dir / str(version))


def _find(role: str, version: int | None, root: Path) -> AdapterRef:
    versions = _versions(root / role)
    if not versions:
        have = roles(root)
        raise AdapterError(f"no adapter named '{role}' in {root} "
                           + (f"(have: {', '.join(have)})" if have else "(it is empty)"))
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise AdapterError(f"{role}@{version} not found; versions: {_fmt_versions(versions)}")
    return AdapterRef(role, version, root / role / str(version))


def _is_path_like(spec: str) -> bool:
    return "/" in spec or os.sep in spec or spec.startswith("~") or Path(spec).is_dir()


def resolve(spec: str, adapters_dir: str | os.PathLike | None = None) -> AdapterRef | None:
    """`role` -> its newest version, `role@N` -> that one; None when `spec` is a path, not a name."""
    if _is_path_like(spec):
        return None
    parsed = parse_name(spec)
    if parsed is None:
        return None
    return _find(*parsed, adapters_root(adapters_dir))


def get(spec: str, adapters_dir: str | os.PathLike | None = None) -> AdapterRef:
    """Like `resolve`, but `spec` must be a name (a same-named directory in the cwd does not count)."""
    parsed = parse_name(spec)
    if parsed is None:
        raise AdapterError(f"{spec!r} is not an adapter name (role or role@version, "
                           "role in lowercase letters, digits, '-' and '_')")
    return _find(*parsed, adapters_root(adapters_dir))


def remove(spec: str, adapters_dir: str | os.PathLike | None = None) -> AdapterRef:
    """Delete the entry `role@N` (an explicit version is required)."""
    parsed = parse_name(spec)
    root = adapters_root(adapters_dir)
    if parsed is not None and parsed[1] is None:
        versions = _versions(root / parsed[0])
        raise AdapterError(f"remove needs an explicit version: {parsed[0]}@N "
                           f"(versions: {_fmt_versions(versions)})")
    ref = get(spec, root)
    trash = ref.path.parent / f".trash-{ref.version}-{uuid.uuid4().hex}"
    with _locked(root):
        if not ref.path.is_dir():
            raise AdapterError(f"{ref.name} not found (removed meanwhile)")
        try:
            os.rename(ref.path, trash)
        except OSError as e:
            raise AdapterError(f"cannot remove {ref.name}: {e.strerror or e}") from None
    shutil.rmtree(trash, ignore_errors=True)
    return ref


# ---- reading an entry ------------------------------------------------------------------------

def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def read_metrics(path: str | os.PathLike) -> MetricsSummary:
    """Summarise metrics.jsonl (an entry directory or the file); unreadable lines are skipped."""
    p = Path(path)
    p = p / METRICS_FILE if p.is_dir() else p
    steps = final = best = best_step = None
    n = 0
    try:
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return MetricsSummary()
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        n += 1
        step = int(rec["step"]) if _num(rec.get("step")) is not None else None
        if step is not None:
            steps = step if steps is None else max(steps, step)
        if (t := _num(rec.get("train_loss"))) is not None:
            final = t
        if (v := _num(rec.get("val_loss"))) is not None and (best is None or v < best):
            best, best_step = v, step
    return MetricsSummary(steps, final, best, best_step, n)


def eval_headline(record: dict[str, Any] | None) -> dict[str, float]:
    """bench -> accuracy of the evaluated model in an eval record (see iceburg_mlx.eval.report)."""
    model = (record or {}).get("model") if isinstance(record, dict) else None
    benches = model.get("benches") if isinstance(model, dict) else None
    if not isinstance(benches, dict):
        return {}
    return {b: float(r["accuracy"]) for b, r in benches.items()
            if isinstance(r, dict) and _num(r.get("accuracy")) is not None}


def _created(provenance: dict[str, Any], path: Path) -> _dt.datetime:
    stamp = provenance.get("created")
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            t = _dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            return t if t.tzinfo else t.astimezone()  # naive: local time
    weights = path / WEIGHTS_FILE
    mtime = (weights if weights.exists() else path).stat().st_mtime
    return _dt.datetime.fromtimestamp(mtime, tz=_dt.timezone.utc)


def _read_eval(path: Path) -> dict[str, Any] | None:
    """The entry's eval.json (written by `iceburg-mlx eval --out`), or None."""
    record = read_json(path / EVAL_FILE)
    return record if isinstance(record, dict) else None


def entry_info(ref: AdapterRef) -> AdapterInfo:
    """What an entry's files say about it; unreadable files are named in `problems`, not raised."""
    problems: list[str] = []

    def attempt(read, default):
        try:
            value = read()
        except IceburgError as e:
            problems.append(str(e))
            return default
        return default if value is None else value

    provenance = attempt(lambda: read_json(ref.path / PROVENANCE_FILE), {})
    config = attempt(lambda: read_json(ref.path / CONFIG_FILE), {})
    provenance = provenance if isinstance(provenance, dict) else {}
    config = config if isinstance(config, dict) else {}
    base = provenance.get("base") or config.get("base_model")
    record = attempt(lambda: _read_eval(ref.path), None)
    return AdapterInfo(ref.role, ref.version, ref.path, _created(provenance, ref.path),
                       str(base) if base is not None else None, read_metrics(ref.path),
                       eval_headline(record), tuple(problems))


def list_entries(adapters_dir: str | os.PathLike | None = None) -> list[AdapterInfo]:
    """Every entry, by role then version."""
    root = adapters_root(adapters_dir)
    return [entry_info(AdapterRef(role, v, root / role / str(v)))
            for role in roles(root) for v in _versions(root / role)]


def read_entry_files(ref: AdapterRef) -> dict[str, Any]:
    """The raw documents of an entry for display: config, provenance, recipe (a dict), eval record."""
    import yaml

    out: dict[str, Any] = {"config": read_json(ref.path / CONFIG_FILE),
                           "provenance": read_json(ref.path / PROVENANCE_FILE), "recipe": None, "eval": None}
    recipe = ref.path / RECIPE_FILE
    if recipe.is_file():
        try:
            out["recipe"] = yaml.safe_load(recipe.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise AdapterError(f"{recipe}: cannot read ({str(e).splitlines()[0]})") from None
    try:
        out["eval"] = _read_eval(ref.path)
    except IceburgError as e:
        raise AdapterError(str(e)) from None
    return out
