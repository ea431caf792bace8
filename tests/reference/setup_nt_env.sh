#!/usr/bin/env bash
# Build the pinned neural-tangents reference environment used to cross-check deeplimits.
#
#   bash tests/reference/setup_nt_env.sh [VENV]     # default VENV: .venv-nt at the repository root
#
# It is a separate virtualenv because neural-tangents 0.6.5 needs jax 0.4.23 and numpy<2, while
# deeplimits runs on current JAX. Re-running is cheap: an environment that already imports
# neural_tangents is left as it is. Needs the package registry, ~2 GB of disk, a few minutes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-$root/.venv-nt}"
python="${PYTHON:-python3}"
export TF_CPP_MIN_LOG_LEVEL=3

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import neural_tangents" >/dev/null 2>&1; then
  echo "setup_nt_env: $venv already imports neural_tangents"
else
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -c "$here/constraints.txt" -r "$here/requirements.txt"
fi
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
import neural_tangents  # noqa: F401  (fails loudly if the environment is broken)
print("setup_nt_env:", ", ".join(f"{p}=={md.version(p)}" for p in ("jax", "neural-tangents", "tensorflow-cpu", "numpy")))
PY
