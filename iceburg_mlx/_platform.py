"""Linux CPU set-up that must happen before `mlx.core` is imported.

The Linux `mlx[cpu]` wheel links a reference BLAS (~7 GFLOP/s f32 matmul on this machine kind).
Loading Debian's OpenBLAS (libopenblas0-pthread) with RTLD_GLOBAL before `mlx.core` makes MLX's
CPU matmuls resolve to it (~215 GFLOP/s; ~390 with `OPENBLAS_CORETYPE=SkylakeX` on AVX-512
CPUs that OpenBLAS 0.3.21 does not recognise). glibc's malloc returns MLX's large temporaries to
the kernel and page-faults them back; `GLIBC_TUNABLES` fixes that, but only when set before the
process starts, so the CLI re-executes itself once with it (see `malloc_env`).

Everything here is Linux-only, happens only when the library is found, and is switched off by
`ICEBURG_MLX_NO_TUNE=1`. `status()` reports what happened (shown by `iceburg-mlx doctor`).
"""

from __future__ import annotations

import ctypes
import os
import sys
from dataclasses import dataclass, field

OPT_OUT_ENV = "ICEBURG_MLX_NO_TUNE"
MALLOC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)


@dataclass
class PlatformStatus:
    opted_out: bool = False
    openblas: str | None = None          # path loaded, or None
    openblas_coretype: str | None = None
    openblas_note: str = ""
    malloc_tuned: bool = False
    notes: list[str] = field(default_factory=list)


_STATUS = PlatformStatus()
_DONE = False


def tuning_enabled() -> bool:
    return sys.platform.startswith("linux") and os.environ.get(OPT_OUT_ENV, "") not in ("1", "true", "yes")


def _has_avx512f() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return " avx512f " in f" {line.split(':', 1)[-1].strip()} "
    except OSError:
        pass
    return False


def find_openblas() -> str | None:
    explicit = os.environ.get("ICEBURG_MLX_OPENBLAS")
    for cand in ([explicit] if explicit else []) + list(OPENBLAS_CANDIDATES):
        if cand and os.path.exists(cand):
            return cand
    return None


def malloc_env(env: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to re-exec with so glibc keeps large blocks, or None if nothing to do."""
    env = dict(os.environ if env is None else env)
    if not tuning_enabled():
        return None
    cur = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.mmap_max" in cur:
        return None
    env["GLIBC_TUNABLES"] = f"{cur}:{MALLOC_TUNABLES}" if cur else MALLOC_TUNABLES
    return env


def setup() -> PlatformStatus:
    """Preload OpenBLAS before mlx.core (idempotent). Safe to call anywhere; never raises."""
    global _DONE
    if _DONE:
        return _STATUS
    _DONE = True
    _STATUS.malloc_tuned = "glibc.malloc.mmap_max=0" in os.environ.get("GLIBC_TUNABLES", "")
    if not sys.platform.startswith("linux"):
        return _STATUS
    if not tuning_enabled():
        _STATUS.opted_out = True
        return _STATUS
    if "mlx.core" in sys.modules:
        _STATUS.openblas_note = "mlx.core was imported before iceburg_mlx; OpenBLAS not preloaded"
        return _STATUS
    path = find_openblas()
    if path is None:
        _STATUS.openblas_note = "libopenblas not found (apt-get install libopenblas0-pthread)"
        return _STATUS
    if "OPENBLAS_CORETYPE" not in os.environ and _has_avx512f():
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    _STATUS.openblas_coretype = os.environ.get("OPENBLAS_CORETYPE")
    try:
        ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
        _STATUS.openblas = path
    except OSError as e:  # pragma: no cover - depends on the system library
        _STATUS.openblas_note = f"could not load {path}: {e}"
    return _STATUS


def status() -> PlatformStatus:
    return _STATUS
