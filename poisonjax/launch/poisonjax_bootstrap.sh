#!/usr/bin/env bash
# Bootstraps a TPU worker for poisonjax: a virtual environment with a Python
# poisonjax supports, then JAX and poisonjax in it. Copied to every worker
# and run by `poisonjax launch tpu`:
#
#   bash poisonjax_bootstrap.sh VENV PYTHON_VERSION REQUIREMENT...
#   bash poisonjax_bootstrap.sh .poisonjax/venv 3.11 'jax[tpu]==0.10.2' ./poisonjax-0.1.0-py3-none-any.whl
#
# Why: the TPU runtimes' images are Ubuntu 22.04, whose python3 is 3.10;
# poisonjax and current JAX need 3.11 or newer. uv (installed with the
# image's pip) makes the venv with its own Python build.
#
# Idempotent: the venv records what it was made from (Python version,
# requirements, a local wheel's sha256); when that matches and jax and
# poisonjax import, it says so and exits in seconds.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: bash $0 VENV PYTHON_VERSION REQUIREMENT..." >&2
  exit 2
fi
venv=$1 python_version=$2
shift 2

want="python $python_version"
for req in "$@"; do
  if [ -f "$req" ]; then
    want="$want | $req sha256 $(sha256sum "$req" | cut -d' ' -f1)"
  else
    want="$want | $req"
  fi
done
stamp="$venv/poisonjax-bootstrap.txt"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
    "$venv/bin/python" -c "import jax, poisonjax" 2>/dev/null; then
  echo "bootstrap: $venv is up to date ($("$venv/bin/python" --version 2>&1))"
  exit 0
fi

export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv >/dev/null 2>&1; then
  echo "bootstrap: installing uv with $(python3 --version 2>&1)"
  # Newer images mark the system Python externally managed (PEP 668).
  python3 -m pip install --user --quiet uv ||
    python3 -m pip install --user --quiet --break-system-packages uv
fi
rm -rf "$venv"
uv venv --quiet --python "$python_version" "$venv"
uv pip install --quiet --python "$venv/bin/python" "$@"
"$venv/bin/python" -c "import sys, jax, poisonjax; print('bootstrap: Python', sys.version.split()[0], '| jax', jax.__version__)"
printf '%s\n' "$want" > "$stamp"
