#!/usr/bin/env bash
# Installs a lock file into a venv, then this project into it (editable, without resolving
# again), with uv. Usage: requirements/install.sh VENV [LOCK]; without LOCK it only makes sure
# the venv has uv (what `make lock` needs).
#
# Why uv rather than pip: on this project's 2-core machines it installs the test lock into a
# fresh venv in 31-34 s where pip takes 105 s, bytecode included. The bytecode matters: the
# machines set PYTHONDONTWRITEBYTECODE=1, so a module installed without its .pyc is compiled
# again by every process that imports it (a CI run without them did not finish its tests in
# 39 min). uv compiles on every core; pip compiles one file after another.
# Where uv cannot install (no index it can reach, only pip's own configured wheel folders), the
# lock goes in with pip, as before.
set -euo pipefail
UV_VERSION=0.13.9
venv=$1 lock=${2:-}
python=$venv/bin/python
uv=$venv/bin/uv
if ! "$uv" --version 2>/dev/null | grep -qx "uv $UV_VERSION"; then
  "$python" -m pip install -q "uv==$UV_VERSION"
fi
[ -n "$lock" ] || exit 0
if ! "$uv" pip install -q --python "$python" --compile-bytecode -r "$lock"; then
  echo "uv could not install $lock: installing it with pip" >&2
  "$python" -m pip install -q -r "$lock"
fi
"$uv" pip install -q --python "$python" --compile-bytecode --no-deps -e .
