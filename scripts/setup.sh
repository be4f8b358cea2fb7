#!/usr/bin/env bash
# One-command set-up: Debian packages, then a .venv with the pinned stack and this package (editable), then
# the interface package f3rm_ros_interfaces built with cmake and installed into the .venv.
# Idempotent: stamps keyed on the requirement files and on the interface files make re-runs instant when
# nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

need_apt=()
# cmake, ninja-build, g++: building f3rm_ros_interfaces (the generated C/C++ code and Python extension).
# iproute2: the two-computer DDS test (network namespaces joined by a veth pair).
for pkg in libusb-1.0-0 libgl1 libgomp1 cmake ninja-build g++ iproute2; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] apt: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

stamp="$VENV/.f3rm_setup_stamp"
# requirements.txt includes -ml (the ML stack), -ros (the ROS 2 Kilted wheels) and -dev (tests, lint)
want=$(cat requirements*.txt setup.py scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $VENV is up to date"
else
  echo "[setup] creating $VENV (first run takes a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r requirements.txt
  "$VENV/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi

# --- f3rm_ros_interfaces (msg/srv): cmake + ninja against the ROS pip wheels --------------------------------
# Where it goes: the install prefix is the venv itself, the layout the ROS wheels use (std_msgs' files are in
# .venv/lib, .venv/lib/python3.11/site-packages and .venv/share too). So `import f3rm_ros_interfaces` needs no
# PYTHONPATH, the ament index entry joins the venv's index, and the generated libraries sit in .venv/lib,
# which the wheels' ros_wheels_bootstrapper.pth puts on LD_LIBRARY_PATH whenever the venv python starts.
# A separate prefix (a .pth file plus an $ORIGIN RPATH) is not enough: the import works, but
# rosidl_typesupport_c looks up the middleware's typesupport library (..._typesupport_fastrtps_c.so) along
# LD_LIBRARY_PATH only (rcpputils::find_library_path), and serializing fails with "type support not from
# this implementation" (measured).
# Build tools: ament_cmake and rosidl_default_generators come from pip into their own --target folder, on
# PYTHONPATH/CMAKE_PREFIX_PATH for the build only. ONE pip call: a second `pip --target` call would replace
# the folder's share/. Several of these wheels do not declare their dependencies, hence the full list.
IFACE_SRC=f3rm_ros_interfaces
TOOLS="$VENV/ros_build_tools"
IFACE_BUILD="$VENV/ros_build/f3rm_ros_interfaces"
tool_pkgs=(ros-kilted-ament-package ros-kilted-ament-cmake ros-kilted-ament-cmake-core
  ros-kilted-ament-cmake-export-definitions ros-kilted-ament-cmake-export-dependencies
  ros-kilted-ament-cmake-export-include-directories ros-kilted-ament-cmake-export-interfaces
  ros-kilted-ament-cmake-export-libraries ros-kilted-ament-cmake-export-link-flags
  ros-kilted-ament-cmake-export-targets ros-kilted-ament-cmake-gen-version-h ros-kilted-ament-cmake-libraries
  ros-kilted-ament-cmake-python ros-kilted-ament-cmake-target-dependencies ros-kilted-ament-cmake-test
  ros-kilted-ament-cmake-version ros-kilted-ament-cmake-include-directories ros-kilted-rosidl-default-generators
  ros-kilted-rosidl-core-generators ros-kilted-ament-cmake-ros-core catkin-pkg)
iface_stamp="$VENV/.f3rm_interfaces_stamp"
iface_want=$( (echo "$want"; find "$IFACE_SRC" -type f | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -d' ' -f1)
if [ -f "$iface_stamp" ] && [ "$(cat "$iface_stamp")" = "$iface_want" ]; then
  echo "[setup] $IFACE_SRC is up to date"
else
  echo "[setup] building $IFACE_SRC into $VENV"
  tools_want="${tool_pkgs[*]}"
  if [ "$(cat "$TOOLS/.stamp" 2>/dev/null)" != "$tools_want" ]; then
    rm -rf "$TOOLS"
    "$VENV/bin/python" -m pip install -q --no-warn-conflicts --target "$TOOLS" "${tool_pkgs[@]}"
    echo "$tools_want" > "$TOOLS/.stamp"
  fi
  venv_abs="$(cd "$VENV" && pwd)"
  tools_abs="$(cd "$TOOLS" && pwd)"
  old_manifest=$(mktemp)
  cp "$IFACE_BUILD/install_manifest.txt" "$old_manifest" 2>/dev/null || true
  mkdir -p "$IFACE_BUILD"
  log="$IFACE_BUILD/../f3rm_ros_interfaces.log"
  # AMENT_PREFIX_PATH: the venv only, so the installed parent_prefix_path marker does not name the tools.
  if ! { PYTHONPATH="$tools_abs" CMAKE_PREFIX_PATH="$tools_abs:$venv_abs" AMENT_PREFIX_PATH="$venv_abs" \
           cmake -S "$IFACE_SRC" -B "$IFACE_BUILD" -G Ninja -Wno-dev \
           -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
           -DCMAKE_INSTALL_PREFIX="$venv_abs" -DPython3_EXECUTABLE="$venv_abs/bin/python" \
         && PYTHONPATH="$tools_abs" cmake --build "$IFACE_BUILD" \
         && cmake --install "$IFACE_BUILD"; } >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "[setup] building $IFACE_SRC failed; full log: $log" >&2
    exit 1
  fi
  # Files a previous build installed that this one does not (a removed .msg): delete them.
  LC_ALL=C comm -23 <(LC_ALL=C sort "$old_manifest") <(LC_ALL=C sort "$IFACE_BUILD/install_manifest.txt") \
    | while read -r f; do rm -f "$f"; done
  rm -f "$old_manifest"
  "$VENV/bin/python" -c "from f3rm_ros_interfaces.srv import Query; from f3rm_ros_interfaces.msg import QueryAnswer"
  echo "$iface_want" > "$iface_stamp"
fi
echo "[setup] done"
