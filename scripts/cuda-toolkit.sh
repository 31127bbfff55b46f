#!/usr/bin/env bash
# Installs a CUDA 13.0 toolkit (nvcc, headers, runtime libraries) from PyPI wheels, with no GPU
# and no system CUDA, and prints the environment that builds candle's `cuda` feature.
# Facts behind each step: shared/GPU-BUILD.md (the -cu12 nvcc wheel lacks nvcc; the unsuffixed
# 13.0 wheels form one complete tree under site-packages/nvidia/cu13; pin 13.0.x for driver 580).
# Usage: eval "$(scripts/cuda-toolkit.sh)"
set -euo pipefail
root=${SDPLANE_CUDA_TOOLKIT_DIR:-$HOME/.cache/sdplane/cuda13-venv}
if [ ! -f "$root/.installed-v1" ]; then
  echo "cuda-toolkit: installing CUDA 13.0 wheels into $root (about 650 MB download)" >&2
  python3 -m venv "$root" >&2
  "$root/bin/pip" install -q --no-deps \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35 >&2
  touch "$root/.installed-v1"
fi
cuda=$("$root/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
# The wheels ship only versioned library names; the linker wants the plain ones.
for lib in cudart nvrtc cublas cublasLt curand; do
  target=$(ls "$cuda/lib/lib$lib.so."* 2>/dev/null | head -n 1 || true)
  [ -n "$target" ] && [ ! -e "$cuda/lib/lib$lib.so" ] && ln -s "$(basename "$target")" "$cuda/lib/lib$lib.so"
done
cat <<ENV
export CUDA_HOME=$cuda CUDA_ROOT=$cuda CUDA_PATH=$cuda
export PATH=$cuda/bin:\$PATH
export LIBRARY_PATH=$cuda/lib:\${LIBRARY_PATH:-}
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000
ENV
