#!/usr/bin/env bash
# The first thing a newcomer runs, proved on every CI run: in a clean copy of the committed
# tree, `make` makes a fresh venv from the RUNTIME lock only (no test extra, nothing from
# .venv), and `relaypacs demo` with no RELAYPACS_* setting finishes and prints its delivery
# summary. Fails when the install or the demo fails, the demo takes over 300 s, or the
# summary is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
exec </dev/null

log() { printf '[demo-check] %s\n' "$*" >&2; }

# Nothing from the caller's environment may help: settings, another venv, a PYTHONPATH.
while IFS= read -r name; do unset "$name"; done < <(compgen -e | grep '^RELAYPACS_' || true)
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME

copy="$(mktemp -d)"
trap 'rm -rf "$copy"' EXIT
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  log "copying HEAD $(git rev-parse --short HEAD) (committed files only) to $copy"
  git archive HEAD | tar -x -C "$copy"
else
  log "not a git checkout: copying the working tree to $copy"
  tar -c --exclude=./.venv --exclude=./var --exclude=./.bench-deps . | tar -x -C "$copy"
fi
cd "$copy"

start=$SECONDS
make --no-print-directory .venv/bin/relaypacs
log "venv from requirements/runtime.txt in $((SECONDS - start)) s"
if .venv/bin/python -c 'import pytest' 2>/dev/null; then
  log "FAIL: the runtime venv has pytest: it was not made from the runtime lock alone"
  exit 1
fi

start=$SECONDS
set +e
timeout 300 .venv/bin/relaypacs demo 2>&1 | tee demo.log
rc=${PIPESTATUS[0]}
set -e
log "relaypacs demo exited $rc after $((SECONDS - start)) s"
if [ "$rc" -eq 124 ]; then
  log "FAIL: relaypacs demo did not finish within 300 s"
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  log "FAIL: relaypacs demo exited $rc"
  exit 1
fi
# The summary api/cli/demo.py prints last: the batch done, and instances in the destination folder.
if ! grep -Eq '^batch [0-9]+: done[ ;]' demo.log \
   || ! grep -Eq '^deliveries: .*; [1-9][0-9]* instances in destination folder ' demo.log; then
  log "FAIL: relaypacs demo printed no delivery summary (a done batch, instances delivered)"
  exit 1
fi
log "ok: $(grep -E '^deliveries: ' demo.log)"
