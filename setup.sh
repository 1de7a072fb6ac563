#!/usr/bin/env bash
# Set up autoprune on a fresh Debian machine (Python 3.10+): the Fashion-MNIST and PostgreSQL packages, a virtual
# environment in .venv with PyTorch 2.13.0 (CPU build) installed first, then this package with its test tools.
# Safe to run again: each step is skipped or a no-op when already done.
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages, each only when missing: the Fashion-MNIST files, and the PostgreSQL server the tests start
# (a throw-away one on 127.0.0.1) to check a search against a real database.
missing=()
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${AUTOPRUNE_DATA_DIR:-}" ]; then
  missing+=(dataset-fashion-mnist)
fi
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  missing+=(postgresql)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: the project's range then installs nothing more (a looser spec pulls a CUDA build).
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test]'
echo "autoprune: set up in $(pwd)/.venv" >&2
