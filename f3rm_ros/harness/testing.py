"""Helpers for tests and scripts that talk to f3rm_ros nodes: a private ROS context on its own domain.

`RosProbe` confines DDS to this machine (the tests' own choice, set explicitly: the product leaves DDS
alone unless asked), picks a ROS_DOMAIN_ID (in 100..199, distinct within the process, unless given) so
parallel runs do not hear each other, spins a helper node on a background thread, and offers condition
waits with timeouts (never sleeps as synchronisation). `subprocess_env` gives child processes the same
domain and both localhost DDS variables.
"""
from __future__ import annotations

# rclpy and the ROS messages are imported where used: the domain, environment and process helpers need no ROS.
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..ros.dds import confine_dds_to_localhost, localhost_dds_env
from ..ros.topics import query_remaps, remap_arguments, trainer_remaps


_DOMAIN_IDS = itertools.count(random.randrange(100))


def pick_domain_id() -> int:
    """Pick a ROS_DOMAIN_ID in 100..199 that no earlier call in this process returned (until all 100 are used).

    The first is random (parallel test runs rarely meet); later ones step on from it, so two probes alive in one
    process (a module's fixture and a test's own node) never share a domain and hear each other's servers.
    """
    return 100 + next(_DOMAIN_IDS) % 100


def subprocess_env(domain_id: int, localhost_only: bool = True, **extra: str) -> Dict[str, str]:
    """Environment for a child process: `domain_id`, no model hub, unbuffered output, and DDS on this machine.

    Both DDS variables are set explicitly (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, the packaged Fast DDS
    profile); `localhost_only=False` passes the environment's DDS settings through instead.
    """
    env = localhost_dds_env() if localhost_only else dict(os.environ)
    env.update({'ROS_DOMAIN_ID': str(domain_id), 'HF_HUB_OFFLINE': '1', 'PYTHONUNBUFFERED': '1'})
    env.update(extra)
    return env


class Inbox:
    """Messages received on one subscription, with a wait for a condition on them."""

    def __init__(self):
        self.messages: List[Any] = []
        self.condition = threading.Condition()

    def __call__(self, msg) -> None:
        with self.condition:
            self.messages.append(msg)
            self.condition.notify_all()

    @property
    def last(self) -> Any:
        """Newest message or None."""
        with self.condition:
            return self.messages[-1] if self.messages else None

    def mark(self) -> int:
        """Count of messages so far: pass it as `since` to wait only for newer ones."""
        with self.condition:
            return len(self.messages)

    def wait(self, predicate: Callable[[Any], bool] = lambda msg: True, timeout: float = 10.0,
             what: str = 'a message', since: int = 0) -> Any:
        """Return the newest message (after the first `since`) satisfying `predicate`.

        AssertionError after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        with self.condition:
            while True:
                for msg in reversed(self.messages[since:]):
                    if predicate(msg):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what} '
                                         f'({len(self.messages)} messages received)')
                self.condition.wait(min(left, 0.5))


class RosProbe:
    """A helper node in its own context: subscribe, publish, call services, wait for conditions."""

    def __init__(self, domain_id: Optional[int] = None, name: str = 'f3rm_probe', localhost_only: bool = True):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        if localhost_only:  # both variables, explicitly (and for the children this process starts)
            confine_dds_to_localhost()
        self.domain_id = pick_domain_id() if domain_id is None else int(domain_id)
        os.environ['ROS_DOMAIN_ID'] = str(self.domain_id)
        self.context = Context()
        rclpy.init(context=self.context, domain_id=self.domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._running = True
        self._thread.start()

    def _spin(self) -> None:
        while self._running and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutting down
                if not self._running:
                    return
                raise

    def add_node(self, node) -> None:
        """Spin another node (built with ``context=probe.context``) on the probe's executor."""
        self.executor.add_node(node)

    def subscribe(self, msg_type, topic: str, qos=10) -> Inbox:
        """Collect messages of `topic` into an `Inbox`."""
        inbox = Inbox()
        self.node.create_subscription(msg_type, topic, inbox, qos)
        return inbox

    def status(self, node_name: str) -> Inbox:
        """Collect one node's DiagnosticStatus from /diagnostics, from now on, into a new `Inbox`.

        `node_name` is the fully qualified name the status carries, e.g. '/capture'.
        """
        from diagnostic_msgs.msg import DiagnosticArray
        if not hasattr(self, '_diagnostics'):
            self._diagnostics: Dict[str, List[Inbox]] = {}

            def dispatch(array) -> None:
                for status in array.status:
                    for inbox in list(self._diagnostics.get(status.name, ())):
                        inbox(status)
            self.node.create_subscription(DiagnosticArray, '/diagnostics', dispatch, 50)
        inbox = Inbox()
        self._diagnostics.setdefault(node_name, []).append(inbox)
        return inbox

    def publisher(self, msg_type, topic: str, qos=10):
        """Create a publisher on `topic`."""
        return self.node.create_publisher(msg_type, topic, qos)

    def wait_for_subscribers(self, publisher, count: int = 1, timeout: float = 20.0) -> None:
        """Wait until `publisher` is matched by at least `count` subscriptions."""
        self.wait_until(lambda: publisher.get_subscription_count() >= count, timeout,
                        f'{count} subscriber(s) on {publisher.topic_name}')

    def call(self, srv_type, name: str, request=None, timeout: float = 20.0):
        """Call a service and return its response; AssertionError on timeout."""
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f'service {name} not available after {timeout:.0f} s')
            future = client.call_async(request if request is not None else srv_type.Request())
            done = threading.Event()
            future.add_done_callback(lambda _: done.set())
            if not done.wait(timeout):
                raise AssertionError(f'service {name} did not answer within {timeout:.0f} s')
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, node_name: str, **values) -> List[Any]:
        """Set parameters of another node through its ~/set_parameters service; returns the results."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        return list(self.call(SetParameters, f'{node_name}/set_parameters', request).results)

    @staticmethod
    def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll_s: float = 0.05) -> None:
        """Poll `predicate` until true; AssertionError naming `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')
            time.sleep(poll_s)

    def close(self) -> None:
        """Stop spinning and shut the context down."""
        self._running = False
        self._thread.join(2.0)
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` in MiB (VmRSS from /proc); nan once it has gone."""
    try:
        for line in open(f'/proc/{pid}/status'):
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float('nan')


class NodeProcesses:
    """Node processes started as `ros2 launch` would (one per node), each with its output in a log file.

    `node(name, params)` runs ``python -m f3rm_ros.ros.<name>_node --ros-args --params-file params`` with the
    remaps that connect trainer and query to capture and trainer (`topics`), unless `remaps` are given.
    """

    def __init__(self, env: Dict[str, str], logs: Path, cwd: Optional[Path] = None):
        self.env, self.logs, self.cwd = env, Path(logs), cwd
        self.procs: Dict[str, subprocess.Popen] = {}
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, args: Sequence[str], tag: str = '') -> subprocess.Popen:
        """Start ``python args...`` as `name` (its log: ``<logs>/<name><tag>.log``)."""
        log = open(self.logs / f'{name}{tag}.log', 'w')
        proc = subprocess.Popen([sys.executable, *args], cwd=self.cwd, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)
        log.close()  # the child holds its own descriptor
        self.procs[name] = proc
        return proc

    def node(self, name: str, params: Optional[Path] = None, tag: str = '', remaps=None,
             parameters: Sequence[str] = ()) -> subprocess.Popen:
        """Start the node `name` (capture, trainer, query, replay) with a params file and ``-p`` values."""
        if remaps is None:
            remaps = {'trainer': trainer_remaps(), 'query': query_remaps()}.get(name, [])
        args = ['-m', f'f3rm_ros.ros.{name}_node', '--ros-args']
        if params is not None:
            args += ['--params-file', str(params)]
        for item in parameters:
            args += ['-p', item]
        return self.start(name, [*args, *remap_arguments(remaps)], tag)

    def kill(self, name: str) -> None:
        """SIGKILL `name` and reap it."""
        proc = self.procs[name]
        proc.kill()
        proc.wait(10)

    def stop(self, name: str, timeout: float = 30.0) -> Optional[int]:
        """SIGINT `name` (as Ctrl-C and `ros2 launch` do) and wait; SIGKILL after `timeout`. Returns the exit code."""
        proc = self.procs.get(name)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop_all(self, timeout: float = 30.0) -> None:
        """SIGTERM every process still running, then wait for each (SIGKILL after `timeout`)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def tails(self, chars: int = 3000) -> str:
        """Return the end of every log, for a failure report."""
        return '\n'.join(f'--- {p.name}\n' + p.read_text()[-chars:] for p in sorted(self.logs.glob('*.log')))
