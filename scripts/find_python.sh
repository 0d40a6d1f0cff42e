#!/bin/sh
# The Python that `make` builds .venv with: the newest 3.12+ found (on PATH, then among pyenv's
# installed versions), which gets the current jax (0.12); else python3 (3.11 gets jax 0.10.2,
# which pyproject.toml's pins also allow). `make PYTHON=...` overrides it.
ok() { "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }
for p in python3.14 python3.13 python3.12 \
         $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.*/bin/python3 2>/dev/null | sort -rV); do
  if ok "$p"; then echo "$p"; exit 0; fi
done
echo python3
