#!/usr/bin/env bash
# Generate the controller_manager_msgs-compatible interface package into the venv (the venv is
# the ROS prefix of the pip-installed Kilted wheels). A real ROS 2 install gets this package from
# ros2_control instead, and interfaces/ carries COLCON_IGNORE so colcon never builds it there.
set -euo pipefail
VENV="$(cd "${1:-.venv}" && pwd)"
SRC="$(cd "$(dirname "$0")/../interfaces/controller_manager_msgs" && pwd)"
BUILD="$(dirname "$0")/../build/interfaces/controller_manager_msgs"
PY="$VENV/bin/python"
CMAKE="$VENV/bin/cmake"; [ -x "$CMAKE" ] || CMAKE=cmake
export PATH="$VENV/bin:$PATH"
rm -rf "$BUILD"; mkdir -p "$(dirname "$BUILD")"
"$CMAKE" -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
  -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_PREFIX_PATH="$VENV" -DPython3_EXECUTABLE="$PY" \
  > "$BUILD.configure.log" 2>&1 || { tail -40 "$BUILD.configure.log" >&2; exit 1; }
"$CMAKE" --build "$BUILD" -j 2 > "$BUILD.build.log" 2>&1 || { tail -40 "$BUILD.build.log" >&2; exit 1; }
"$CMAKE" --install "$BUILD" > "$BUILD.install.log" 2>&1 || { tail -40 "$BUILD.install.log" >&2; exit 1; }
"$PY" -c "from controller_manager_msgs.srv import ListControllers, SwitchController" \
  || { echo "build_interfaces: controller_manager_msgs built but does not import" >&2; exit 1; }
echo "bootstrap: controller_manager_msgs generated into $VENV"
