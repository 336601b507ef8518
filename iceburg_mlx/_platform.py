"""Linux CPU set-up that must happen before `mlx.core` is imported.

The Linux `mlx[cpu]` wheel links a reference BLAS (~7 GFLOP/s f32 matmul on this machine kind).
Loading Debian's OpenBLAS (libopenblas0-pthread) with RTLD_GLOBAL before `mlx.core` makes MLX's
CPU matmuls resolve to it (~215 GFLOP/s; ~390 with `OPENBLAS_CORETYPE=SkylakeX` on AVX-512
CPUs that OpenBLAS 0.3.21 does not recognise). glibc's malloc returns MLX's large temporaries to
the kernel and page-faults them back; `GLIBC_TUNABLES` fixes that, but only when set before the
process starts, so the CLI re-executes itself once with it (see `malloc_env`).

MLX calls `cblas_sgemm` for every f32 matmul, also for the M=1 products of single-stream
decoding, where OpenBLAS's sgemm packs the whole weight (~3x the memory traffic of a GEMV). A
small shim (native/sgemm_shim.c, compiled on first use with the system C compiler into the cache
directory) exports its own `cblas_sgemm` that sends matrix-vector products to `cblas_sgemv` and
everything else to OpenBLAS; decoding ran ~1.3x faster with it. `ICEBURG_MLX_NO_GEMV=1` skips it.
The same shim computes small-M products from packed quantized weights (`models/packed.py`); it is
built with `-march=native` (AVX-512 kernels where the CPU has them) and splits each product with
one helper thread that spins briefly, then sleeps.

Everything here is Linux-only, happens only when the library is found, and is switched off by
`ICEBURG_MLX_NO_TUNE=1`. `status()` reports what happened (shown by `iceburg-mlx doctor`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from iceburg_mlx.paths import home_dir

OPT_OUT_ENV = "ICEBURG_MLX_NO_TUNE"
NO_GEMV_ENV = "ICEBURG_MLX_NO_GEMV"
SHIM_SOURCE = Path(__file__).parent / "native" / "sgemm_shim.c"
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
    gemv_shim: str | None = None          # path of the loaded shim, or None
    gemv_note: str = ""
    notes: list[str] = field(default_factory=list)


_STATUS = PlatformStatus()
_DONE = False


def tuning_enabled(env=None) -> bool:
    env = os.environ if env is None else env
    return sys.platform.startswith("linux") and env.get(OPT_OUT_ENV, "") not in ("1", "true", "yes")


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
    if not tuning_enabled(env):
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
    if os.environ.get(NO_GEMV_ENV, "") in ("1", "true", "yes"):
        _STATUS.gemv_note = f"off ({NO_GEMV_ENV})"
    elif _load_shim(path):
        _STATUS.openblas = path
        return _STATUS
    try:
        ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
        _STATUS.openblas = path
    except OSError as e:  # pragma: no cover - depends on the system library
        _STATUS.openblas_note = f"could not load {path}: {e}"
    return _STATUS


SHIM_FLAGS = ("-O3", "-march=native", "-pthread", "-shared", "-fPIC")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def build_shim(dest_root: Path | None = None) -> Path | None:
    """Compile the sgemm->sgemv shim once (keyed by its source); None when no compiler works."""
    if not SHIM_SOURCE.is_file():
        _STATUS.gemv_note = "shim source missing"
        return None
    src = SHIM_SOURCE.read_bytes()
    # -march=native: the build is for this processor, so the key names it too.
    key = hashlib.sha256(src + " ".join(SHIM_FLAGS).encode() + _cpu_flags().encode()).hexdigest()[:16]
    out = (dest_root or home_dir()) / "native" / key / "libiceburg_blas.so"
    if out.is_file():
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        _STATUS.gemv_note = "no C compiler to build the GEMV shim"
        return None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        proc = subprocess.run([cc, *SHIM_FLAGS, "-o", tmp, str(SHIM_SOURCE), "-ldl"],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:  # a compiler without -march=native: the portable build
            proc = subprocess.run([cc, "-O2", "-pthread", "-shared", "-fPIC", "-o", tmp, str(SHIM_SOURCE), "-ldl"],
                                  capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            os.unlink(tmp)
            _STATUS.gemv_note = f"shim build failed: {proc.stderr.strip()[:200]}"
            return None
        os.replace(tmp, out)
    except (OSError, subprocess.SubprocessError) as e:
        _STATUS.gemv_note = f"shim build failed: {e}"
        return None
    return out


def _load_shim(openblas: str) -> bool:
    shim = build_shim()
    if shim is None:
        return False
    try:
        lib = ctypes.CDLL(str(shim), mode=os.RTLD_GLOBAL)
        rc = lib.iceburg_blas_init(openblas.encode())
    except (OSError, AttributeError) as e:
        _STATUS.gemv_note = f"shim not loaded: {e}"
        return False
    if rc != 0:
        _STATUS.gemv_note = f"shim could not bind {openblas} (rc {rc})"
        return False
    _STATUS.gemv_shim = str(shim)
    return True


def gemv_counts() -> tuple[int, int] | None:
    """(matrix-vector products sent to sgemv, other sgemm calls) since start; None without the shim."""
    if not _STATUS.gemv_shim:
        return None
    lib = ctypes.CDLL(_STATUS.gemv_shim)
    lib.iceburg_blas_gemv_calls.restype = ctypes.c_long
    lib.iceburg_blas_gemm_calls.restype = ctypes.c_long
    return int(lib.iceburg_blas_gemv_calls()), int(lib.iceburg_blas_gemm_calls())


def status() -> PlatformStatus:
    return _STATUS
