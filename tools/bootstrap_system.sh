#!/usr/bin/env bash
# Check (and, as root with apt, install) the few system packages the venv bootstrap needs on a
# fresh Debian 12 / Ubuntu 22.04+: venv support, Python headers and a C compiler (to generate the
# controller_manager_msgs interface package), and EGL/Mesa for offscreen MuJoCo cameras.
set -euo pipefail
PY="${1:-python3}"
need=()
"$PY" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
"$PY" - <<'PYEOF' || need+=(python3-dev)
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PYEOF
command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 || need+=(build-essential)
command -v git >/dev/null 2>&1 || need+=(git)
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1'; then need+=(libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri); fi
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "bootstrap: installing system packages: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
else
  echo "bootstrap: missing system packages: ${need[*]}" >&2
  echo "bootstrap: run: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
