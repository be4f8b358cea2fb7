"""The real ROS 2 launch library for tests, and a launch run watched line by line.

`launch` and `launch_ros` have no pip wheels. Where they do not import (no ROS install), the unmodified
sources in ``../shared/vendor/ros2_launch`` are used, and ``../shared/tools/ros2-launch`` stands in for
``ros2 launch`` (shared/notes/ros-toolchain.md). Neither is optional: a test that needs them fails with the
reason rather than skipping (CI runs on a clone next to ../shared).

`LaunchRun` starts a launch in its own process group (so a SIGINT to it never reaches pytest) with SIGINT at
its default disposition, timestamps every line launch and the nodes print, and after an interrupt reports per
node process how long it took to end and how (launch's own "process has finished cleanly" / "process has died"
lines).

SIGINT at its default, whatever pytest inherited: a shell without job control makes its background jobs ignore
SIGINT (``nohup make test > log &`` in a script, ``(cmd &)``), an ignored signal stays ignored across fork and
exec, and Python keeps it ignored (it installs its KeyboardInterrupt handler only where SIGINT was not
ignored). launch has no handler of its own either: it reads signals from `signal.set_wakeup_fd`, which only
sees signals Python handles. So a launch started from such a pytest drops the SIGINT the tests send it, and
runs until killed (the nodes stop on a SIGINT of their own: rclpy.init installs its handler over an ignored
one). `sigint_ignored` reads the disposition from /proc.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from repo_root import ROOT

SHARED = Path(os.environ.get('F3RM_ROS_SHARED', ROOT.parent / 'shared'))
VENDOR = SHARED / 'vendor' / 'ros2_launch'
RUNNER = SHARED / 'tools' / 'ros2-launch'
# launch's defaults (launch.actions.ExecuteLocal): SIGINT, then SIGTERM after 5 s, then SIGKILL after 5 more.
SIGTERM_TIMEOUT_S = 5.0
# `python -c SIGINT_DEFAULT_EXEC COMMAND...`: SIGINT at its default and unblocked, then exec COMMAND. (Popen
# cannot reset it: restore_signals covers SIGPIPE/SIGXFSZ only, and a preexec_fn is unsafe with pytest's threads.)
SIGINT_DEFAULT_EXEC = ('import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); '
                       'signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); '
                       'os.execvp(sys.argv[1], sys.argv[1:])')


def import_launch():
    """Import `launch` and `launch_ros` (a ROS install's, else the vendored sources); return both modules."""
    try:
        import launch
        import launch_ros
        if not hasattr(launch, 'LaunchDescription'):  # the repo's launch/ folder, seen as a namespace package
            raise ImportError(launch.__path__)
    except ImportError:
        if not (VENDOR / 'launch').is_dir():
            raise RuntimeError(f'launch/launch_ros do not import and {VENDOR} does not exist: source a ROS 2 install '
                               'or clone this repository next to the shared folder')
        for name in [n for n in sys.modules if n.split('.')[0] in ('launch', 'launch_ros')]:
            del sys.modules[name]
        sys.path.insert(0, str(VENDOR))
        import launch
        import launch_ros
    return launch, launch_ros


def launch_command(package: str, launch_file: str, arguments: Sequence[str] = ()) -> List[str]:
    """Return the command that does ``ros2 launch PACKAGE FILE name:=value ...``."""
    if RUNNER.is_file():
        return [sys.executable, str(RUNNER), package, launch_file, *arguments]
    if shutil.which('ros2'):
        return ['ros2', 'launch', package, launch_file, *arguments]
    raise RuntimeError(f'neither {RUNNER} nor `ros2` exists: cannot run a launch file')


def with_sigint_default(command: Sequence[str]) -> List[str]:
    """Return `command` run with SIGINT at its default disposition (see the module docstring)."""
    return [sys.executable, '-I', '-S', '-c', SIGINT_DEFAULT_EXEC, *command]


def sigint_ignored(pid: int) -> Optional[bool]:
    """Whether process `pid` ignores SIGINT (its SigIgn mask in /proc); None where that cannot be read."""
    try:
        status = Path(f'/proc/{pid}/status').read_text()
    except OSError:
        return None
    match = re.search(r'^SigIgn:\s*([0-9a-fA-F]+)$', status, re.M)
    return None if match is None else bool(int(match.group(1), 16) >> (signal.SIGINT - 1) & 1)


@dataclass
class ProcessEnd:
    """How one process started by launch ended after the interrupt."""

    name: str            # launch's label, e.g. trainer_node-3
    pid: int
    seconds: float       # from the interrupt to launch's report of the end
    clean: bool          # "process has finished cleanly" (exit code 0)
    exit_code: Optional[int]


class LaunchRun:
    """A launch run (see the module docstring); `lines` holds (monotonic time, text)."""

    def __init__(self, command: Sequence[str], cwd: Path, env: Dict[str, str], log_path: Path):
        self.log_path = log_path
        self.lines: List[Tuple[float, str]] = []
        self._lock = threading.Lock()
        self.interrupted_at: Optional[float] = None
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(with_sigint_default(command), cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors='replace', start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log_path, 'w') as log:
            for line in self.proc.stdout:
                now = time.monotonic()
                with self._lock:
                    self.lines.append((now, line.rstrip('\n')))
                log.write(f'{now - self.started_at:8.2f} {line}')
                log.flush()

    def text(self) -> str:
        """Return everything printed so far."""
        with self._lock:
            return '\n'.join(line for _, line in self.lines)

    def tail(self, count: int = 60) -> str:
        """Return the last lines (for assertion messages)."""
        with self._lock:
            return '\n'.join(line for _, line in self.lines[-count:])

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """Wait for a line matching `pattern`; AssertionError with the output's tail on timeout or exit."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            with self._lock:
                lines = self.lines[seen:]
                seen += len(lines)
            for _, line in lines:
                match = regex.search(line)
                if match:
                    return match
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f'launch exited ({self.proc.returncode}) before /{pattern}/:\n{self.tail()}')
            if time.monotonic() > deadline:
                raise AssertionError(f'no /{pattern}/ within {timeout:.0f} s:\n{self.tail()}')
            time.sleep(0.05)

    def pids(self) -> Dict[str, int]:
        """{launch label: pid} of the processes launch started."""
        return {m.group(1): int(m.group(2))
                for m in re.finditer(r'\[INFO\] \[([\w.-]+)\]: process started with pid \[(\d+)\]', self.text())}

    def interrupt(self, whole_group: bool) -> None:
        """SIGINT as a terminal's Ctrl-C sends it (`whole_group`: launch and every node) or to launch alone."""
        self.interrupted_at = time.monotonic()
        if whole_group:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGINT)

    def wait(self, timeout: float) -> int:
        """Wait for launch to exit (after `interrupt`); returns its exit code. The group is killed on timeout."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            ignored = sigint_ignored(self.proc.pid)
            self.kill()
            why = ' (SIGINT is ignored in the launch process)' if ignored else ''
            raise AssertionError(f'launch still running {timeout:.0f} s after SIGINT{why}:\n{self.tail()}')
        self._reader.join(5.0)
        return code

    def kill(self) -> None:
        """SIGKILL the whole group (clean-up after a failure)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def ends(self) -> Dict[str, ProcessEnd]:
        """{launch label: ProcessEnd} from launch's lines after the interrupt."""
        assert self.interrupted_at is not None, 'interrupt() first'
        started = self.pids()
        by_pid = {pid: name for name, pid in started.items()}
        out: Dict[str, ProcessEnd] = {}
        with self._lock:
            lines = list(self.lines)
        for at, line in lines:
            clean = re.search(r'process has finished cleanly \[pid (\d+)\]', line)
            died = re.search(r'process has died \[pid (\d+), exit code (-?\d+)', line)
            match = clean or died
            if match and int(match.group(1)) in by_pid:
                pid = int(match.group(1))
                out[by_pid[pid]] = ProcessEnd(by_pid[pid], pid, at - self.interrupted_at, bool(clean),
                                              0 if clean else int(died.group(2)))
        return out

    def escalations(self) -> List[str]:
        """Return launch's 'escalating to SIGTERM/SIGKILL' lines (there should be none)."""
        return [line for _, line in self.lines if 'escalating to' in line]
