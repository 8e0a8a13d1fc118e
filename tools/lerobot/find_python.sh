#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter for the LeRobot importer environment, or say
# what to install and exit 1. LeRobot 0.6.1 was verified on 3.12 (3.13 is the fallback). Order: $LEROBOT_PYTHON, python3.12/python3.13 on PATH, pyenv's
# installed versions, the usual prefixes (/usr/bin, /usr/local/bin, /opt/homebrew/bin).
set -uo pipefail
ok() { "$1" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
cands=()
[ -n "${LEROBOT_PYTHON:-}" ] && cands+=("$LEROBOT_PYTHON")
for v in 3.12 3.13; do
  p=$(command -v "python$v" 2>/dev/null) && cands+=("$p")
done
if command -v pyenv >/dev/null 2>&1 || [ -d "${PYENV_ROOT:-$HOME/.pyenv}" ]; then
  root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
  for d in $(ls -1d "$root"/versions/3.12* "$root"/versions/3.13* 2>/dev/null | sort -V); do cands+=("$d/bin/python"); done
fi
for pre in /usr/local/bin /usr/bin /opt/homebrew/bin; do
  for v in 3.12 3.13; do cands+=("$pre/python$v"); done
done
p3=$(command -v python3 2>/dev/null) && cands+=("$p3")
for c in "${cands[@]}"; do
  if [ -x "$c" ] && ok "$c"; then echo "$c"; exit 0; fi
done
cat >&2 <<'MSG'
lerobot-env: no Python >= 3.12 (with the venv module) was found; LeRobot 0.6.1 needs one.
  Debian 13 / Ubuntu 24.04: sudo apt-get install -y python3.12 python3.12-venv
  Debian 12 / Ubuntu 22.04: install one with pyenv (pyenv install 3.12) or uv (uv python install 3.12),
  or use the deadsnakes PPA on Ubuntu (sudo apt-get install -y python3.12 python3.12-venv);
  then rerun, or point LEROBOT_PYTHON=/path/to/python3.12 at it.
MSG
exit 1
