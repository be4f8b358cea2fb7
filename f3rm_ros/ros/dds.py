"""Keep DDS traffic on this machine (DESIGN.md §6).

Fast DDS multicasts discovery on every interface by default. Every f3rm_ros entry point calls
`confine_dds_to_localhost()` before ``rclpy.init()``: it sets ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``
and points ``FASTDDS_DEFAULT_PROFILES_FILE`` at the packaged profile (shared memory with 32 MiB segments +
UDPv4 on 127.0.0.1, built-in transports off). A profile the user already chose is kept.

Set ``F3RM_ROS_DDS_LOCALHOST=0`` to leave the environment alone (robots whose camera driver or RViz run on
another machine). This module does not import rclpy.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Mapping, Optional

PACKAGE = 'f3rm_ros'
PROFILE_NAME = 'fastdds_localhost.xml'
OPT_OUT_VARIABLE = 'F3RM_ROS_DDS_LOCALHOST'


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


def localhost_dds_env(env: Optional[Mapping[str, str]] = None) -> dict:
    """Return a copy of `env` (default: os.environ) whose DDS settings stay on this machine.

    ``ROS_AUTOMATIC_DISCOVERY_RANGE`` becomes ``LOCALHOST``; ``FASTDDS_DEFAULT_PROFILES_FILE`` is set to
    the packaged profile unless it is already set to a non-empty value. With ``F3RM_ROS_DDS_LOCALHOST=0``
    in `env` the copy is returned unchanged. Use it for subprocesses: ``subprocess.run(..., env=...)``.
    """
    out = dict(os.environ if env is None else env)
    if out.get(OPT_OUT_VARIABLE, '').strip().lower() in ('0', 'false', 'no', 'off'):
        return out
    out['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    if not out.get('FASTDDS_DEFAULT_PROFILES_FILE'):
        out['FASTDDS_DEFAULT_PROFILES_FILE'] = str(fastdds_profile_path())
    return out


def confine_dds_to_localhost() -> dict:
    """Apply `localhost_dds_env` to os.environ (call before ``rclpy.init()``); returns the changes made."""
    wanted = localhost_dds_env()
    changed = {key: value for key, value in wanted.items() if os.environ.get(key) != value}
    os.environ.update(changed)
    return changed
