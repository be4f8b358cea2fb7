#!/usr/bin/env bash
# colcon from pip, for building a ROS 2 workspace holding this repo without a ROS install (what
# test/ros_launch/test_workspace_build.py and CI do; with /opt/ros/<distro> sourced, use its colcon instead).
#
#   scripts/colcon_tools.sh            install colcon into .venv/colcon if needed (idempotent, ~10 s once)
#   scripts/colcon_tools.sh ARGS...    the same, then run `colcon ARGS...` in the current directory
#
# colcon goes into its own `pip --target` folder, not into the project venv: colcon-core pins setuptools<80
# and would downgrade the venv's setuptools. It runs with the venv's python, so ament_python packages
# (f3rm_ros) are built by, and their console scripts point at, the python that has rclpy and torch.
# ament_cmake packages (f3rm_ros_interfaces) find ament_cmake and the rosidl generators in
# .venv/ros_build_tools, which scripts/setup.sh installs, and everything else (std_msgs, ...) in the venv
# (rosidl finds the typesupports through the ament index: the venv must be on AMENT_PREFIX_PATH; colcon then
# warns that it has no local_setup.* files, which is harmless).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$root/$VENV" ;; esac  # relative: to the repo, like setup.sh
COLCON="$VENV/colcon"
TOOLS="$VENV/ros_build_tools"
pkgs=(colcon-core colcon-ros colcon-python-setup-py colcon-package-information colcon-package-selection
  colcon-parallel-executor colcon-library-path colcon-bash colcon-output colcon-recursive-crawl colcon-cmake
  ros-kilted-ament-package)

[ -x "$VENV/bin/python" ] || { echo "[colcon_tools] $VENV missing: run scripts/setup.sh first" >&2; exit 1; }
if [ "$(cat "$COLCON/.stamp" 2>/dev/null)" != "${pkgs[*]}" ]; then
  echo "[colcon_tools] installing colcon into $COLCON" >&2
  rm -rf "$COLCON"
  "$VENV/bin/python" -m pip install -q --no-warn-conflicts --target "$COLCON" "${pkgs[@]}" >&2
  echo "${pkgs[*]}" > "$COLCON/.stamp"
fi
[ $# -gt 0 ] || exit 0

[ -d "$TOOLS/share/ament_cmake" ] || { echo "[colcon_tools] $TOOLS missing: run scripts/setup.sh" >&2; exit 1; }
venv_abs="$(cd "$VENV" && pwd)"
export PYTHONPATH="$COLCON:$TOOLS${PYTHONPATH:+:$PYTHONPATH}"
export CMAKE_PREFIX_PATH="$TOOLS:$venv_abs${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export AMENT_PREFIX_PATH="$venv_abs${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
exec "$VENV/bin/python" -c 'import sys; sys.argv[0] = "colcon"; from colcon_core.command import main; sys.exit(main())' "$@"
