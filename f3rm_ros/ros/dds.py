"""Confine DDS to this machine, when asked (docs/dds.md).

By default f3rm_ros leaves DDS alone: discovery range, transports and middleware profiles are the user's,
as for any ROS 2 package (a robot's camera driver, trainer and RViz often run on different computers).
Confinement is asked for explicitly, and then sets both variables for the process and everything it starts:

* ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (any RMW: discovery only on this machine), and
* ``FASTDDS_DEFAULT_PROFILES_FILE`` = the packaged profile ``config/fastdds_localhost.xml`` (Fast DDS:
  shared memory with 32 MiB segments + UDPv4 on 127.0.0.1 only, the built-in transports off).

Who asks: the launch files' ``localhost_only:=true`` argument (SetEnvironmentVariable actions for every
process they start, RViz included), ``f3rm-ros <command> --localhost-only``, and the project's own tests,
``make demo`` and CI (``scripts/env.sh``; `f3rm_ros.harness.testing`). This module does not import rclpy.
"""
from __future__ import annotations

# Imported where used (optional): ament_index_python, which only a colcon / ament install has.
import os
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional

PACKAGE = 'f3rm_ros'
PROFILE_NAME = 'fastdds_localhost.xml'
RANGE_VARIABLE = 'ROS_AUTOMATIC_DISCOVERY_RANGE'
PROFILE_VARIABLE = 'FASTDDS_DEFAULT_PROFILES_FILE'


def _candidate_profiles() -> List[Path]:
    """Places the profile can live, most specific first."""
    candidates = []
    try:  # colcon / ament install: <prefix>/share/f3rm_ros/config/
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory(PACKAGE)) / 'config' / PROFILE_NAME)
    except Exception:  # not installed with ament, or ament_index_python missing
        pass
    package_dir = Path(__file__).resolve().parents[1]
    candidates.append(package_dir / 'config' / PROFILE_NAME)          # package_data (f3rm_ros/config/)
    candidates.append(package_dir.parent / 'config' / PROFILE_NAME)   # source checkout (repo/config/)
    # pip install: setup.py's data_files land under <sys.prefix>/share/f3rm_ros/config/
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix]):
        candidates.append(Path(prefix) / 'share' / PACKAGE / 'config' / PROFILE_NAME)
    return candidates


def fastdds_profile_path() -> Path:
    """Path of the packaged localhost Fast DDS profile; FileNotFoundError lists where it was looked for."""
    candidates = _candidate_profiles()
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f'{PROFILE_NAME} not found; looked in: ' + ', '.join(str(p) for p in candidates)
        + '. Reinstall f3rm_ros, or set FASTDDS_DEFAULT_PROFILES_FILE yourself.')


def localhost_dds_env(env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Return a copy of `env` (default: os.environ) whose DDS stays on this machine.

    Both variables are set, whatever they were: ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` and
    ``FASTDDS_DEFAULT_PROFILES_FILE`` = the packaged profile. Use it for subprocesses:
    ``subprocess.run(..., env=localhost_dds_env())``.
    """
    out = dict(os.environ if env is None else env)
    out[RANGE_VARIABLE] = 'LOCALHOST'
    out[PROFILE_VARIABLE] = str(fastdds_profile_path())
    return out


def confine_dds_to_localhost() -> Dict[str, str]:
    """Apply `localhost_dds_env` to os.environ (call before ``rclpy.init()``); returns the changes made."""
    wanted = localhost_dds_env()
    changed = {key: wanted[key] for key in (RANGE_VARIABLE, PROFILE_VARIABLE) if os.environ.get(key) != wanted[key]}
    os.environ.update(changed)
    return changed


def user_profile_replaced(env: Optional[Mapping[str, str]] = None) -> str:
    """Return the user's own Fast DDS profile that confinement would replace ('' when none is set, or it is ours)."""
    current = (os.environ if env is None else env).get(PROFILE_VARIABLE, '')
    if not current:
        return ''
    try:
        ours = fastdds_profile_path()
    except FileNotFoundError:
        return current
    return '' if os.path.realpath(current) == os.path.realpath(ours) else current


def describe_localhost() -> str:
    """One line for logs: what confinement set."""
    return (f'DDS confined to this machine: {RANGE_VARIABLE}=LOCALHOST, {PROFILE_VARIABLE}={fastdds_profile_path()} '
            '(shared memory + UDP on 127.0.0.1)')
