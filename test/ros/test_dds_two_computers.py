"""Two computers for real: the camera side and the GPU side in two network namespaces joined by a veth pair.

Namespace A (the robot PC) runs the replay and capture nodes; namespace B (the workstation) runs the trainer,
the query node and a planner-like probe. Each namespace has only its loopback and its end of the veth
(10.213.x.1/2, multicast on, a 224.0.0.0/4 route; no default route): nothing can leave them, whatever DDS does.

* DDS at its defaults (no ROS_AUTOMATIC_DISCOVERY_RANGE, no Fast DDS profile: SUBNET discovery by multicast,
  the built-in transports): the trainer gets the keyframes from A, checkpoints, and the probe's
  ``/query/locate`` call in B is answered. The bytes received on B's veth end exceed the keyframe pixels the
  trainer took in, so the data really crossed the link (the namespaces share /dev/shm, and Fast DDS could
  have used shared memory between them).
* The same with every process confined (both variables, as ``localhost_only:=true`` / ``--localhost-only``
  set them): B never sees A's nodes, the trainer gets no keyframe, and the query node answers NO_MODEL.

The namespaces are removed by a fixture finalizer, also when a test fails. Without the privilege to make them
the tests skip and say why (the exact error of ``ip netns add``).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from f3rm_ros.ros.dds import localhost_dds_env
from f3rm_ros.harness.testing import pick_domain_id
from f3rm_ros.ros.topics import query_remaps, remap_arguments, trainer_remaps

from repo_root import ROOT

pytestmark = pytest.mark.ros

# What the launch files do: the trainer's relative keyframe/* inputs and the query's checkpoint input remapped to
# the capture and trainer outputs.
REMAPS = {'trainer': remap_arguments(trainer_remaps()), 'query': remap_arguments(query_remaps())}

DDS_VARIABLES = ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'FASTDDS_DEFAULT_PROFILES_FILE', 'ROS_LOCALHOST_ONLY',
                 'ROS_STATIC_PEERS', 'RMW_IMPLEMENTATION', 'ROS_DISCOVERY_SERVER')
VIEWS, WIDTH, HEIGHT = 16, 96, 72
PARAMS = {
    '/**': {'ros__parameters': {
        'preset': 'cpu-tiny', 'trainer': {'steps': 2000, 'checkpoint_every': 20, 'eval_every': 0}}},
    'capture': {'ros__parameters': {'min_interval_s': 0.0, 'min_sharpness': 0.0}},
    'trainer': {'ros__parameters': {'min_frames': 6, 'torch_threads': 1}},
    'query': {'ros__parameters': {'image_width': 64, 'image_height': 48, 'torch_threads': 1}},
    'replay': {'ros__parameters': {'scene_views': VIEWS, 'scene_width': WIDTH, 'scene_height': HEIGHT,
                                   'rate_hz': 4.0, 'start_delay_s': 3.0}},
}
PROBE = textwrap.dedent('''
    """Inside namespace B: watch the graph for `seconds`, ask /query/locate "mug" (until FOUND, or once at the end)."""
    import json, sys, time
    from f3rm_ros.harness.testing import RosProbe
    from f3rm_ros_interfaces.msg import QueryAnswer
    from f3rm_ros_interfaces.srv import Query
    mode, seconds, domain = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    probe = RosProbe(domain_id=domain, name='planner_probe', localhost_only=False)  # DDS: as the environment says
    nodes, answers, deadline = set(), [], time.monotonic() + seconds
    def ask(timeout):
        try:
            answer = probe.call(Query, '/query/locate', Query.Request(positives=['mug']), timeout=timeout).answer
            answers.append([int(answer.status), answer.reason])
        except AssertionError as error:  # no service, or no answer in time
            answers.append([-1, str(error)])
    while time.monotonic() < deadline:
        nodes |= set(probe.node.get_node_names())
        if mode == 'until-found':  # NO_MODEL until the first checkpoint, maybe NOT_PRESENT early in training
            ask(max(1.0, min(60.0, deadline - time.monotonic())))
            if answers[-1][0] == QueryAnswer.FOUND:
                break
        time.sleep(1.0)
    if mode == 'observe':
        ask(30.0)
    print('PROBE ' + json.dumps({'nodes': sorted(nodes), 'answers': answers}), flush=True)
    probe.close()
''')


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``ip ARGS``; CalledProcessError carries its stderr."""
    return subprocess.run(['ip', *args], capture_output=True, text=True, check=check, timeout=30)


def rx_bytes(namespace: str, device: str) -> int:
    """Bytes received so far on `device` inside `namespace`."""
    stats = json.loads(ip('-n', namespace, '-s', '-j', 'link', 'show', device).stdout)
    return int(stats[0]['stats64']['rx']['bytes'])


@pytest.fixture
def two_computers(request):
    """Namespaces A and B joined by a veth pair; removed afterwards, even when the test fails."""
    if shutil.which('ip') is None:
        pytest.skip('iproute2 (ip) is not installed: scripts/setup.sh installs it')
    tag = f'{os.getpid() % 100000}{request.node.name[-1]}'
    a, b, va, vb = f'f3a{tag}', f'f3b{tag}', f'f3va{tag}', f'f3vb{tag}'
    subnet = f'10.213.{os.getpid() % 250}'
    made = []

    def remove():
        for namespace in made:
            ip('netns', 'del', namespace, check=False)  # deleting a namespace deletes its veth end too
    request.addfinalizer(remove)
    try:
        ip('netns', 'add', a)
    except subprocess.CalledProcessError as error:
        pytest.skip(f'cannot create a network namespace here: `ip netns add {a}` failed: {error.stderr.strip()}')
    made.append(a)
    ip('netns', 'add', b)
    made.append(b)
    ip('link', 'add', va, 'type', 'veth', 'peer', 'name', vb)
    for namespace, device, address in ((a, va, f'{subnet}.1/24'), (b, vb, f'{subnet}.2/24')):
        ip('link', 'set', device, 'netns', namespace)
        ip('-n', namespace, 'addr', 'add', address, 'dev', device)
        ip('-n', namespace, 'link', 'set', 'lo', 'up')
        ip('-n', namespace, 'link', 'set', device, 'up', 'multicast', 'on')
        ip('-n', namespace, 'route', 'add', '224.0.0.0/4', 'dev', device)  # DDS discovery multicast
        links = sorted(line.split(':')[1].strip().split('@')[0] for line in
                       ip('-n', namespace, '-o', 'link').stdout.splitlines())
        routes = ip('-n', namespace, 'route').stdout
        assert links == sorted(['lo', device]) and 'default' not in routes, (links, routes)  # no way out
    return {'a': a, 'b': b, 'va': va, 'vb': vb}


class NamespaceProcesses:
    """Processes started inside namespaces (their own process groups), output in log files."""

    def __init__(self, logs: Path):
        self.logs, self.procs = logs, {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, namespace: str, env: dict, args) -> None:
        log = open(self.logs / f'{name}.log', 'w')
        self.procs[name] = subprocess.Popen(['ip', 'netns', 'exec', namespace, sys.executable, *args], cwd=ROOT,
                                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def node(self, name: str, namespace: str, env: dict, params: Path) -> None:
        self.start(name, namespace, env, ['-m', f'f3rm_ros.ros.{name}_node', '--ros-args', '--params-file',
                                          str(params), *REMAPS.get(name, [])])

    def log(self, name: str) -> str:
        return (self.logs / f'{name}.log').read_text(errors='replace')

    def wait_for(self, name: str, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log(name))
            if match:
                return match
            time.sleep(0.2)
        raise AssertionError(f'{name}: no /{pattern}/ within {timeout:.0f} s\n{self.tails()}')

    def probe_result(self, timeout: float) -> dict:
        self.procs['probe'].wait(timeout)
        match = re.search(r'^PROBE (.*)$', self.log('probe'), re.M)
        assert match, self.tails()
        return json.loads(match.group(1))

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def tails(self) -> str:
        return '\n'.join(f'--- {p.name}\n' + p.read_text(errors='replace')[-2500:]
                         for p in sorted(self.logs.glob('*.log')))


def environment(domain_id: int, localhost_only: bool, log_dir: Path) -> dict:
    """Return the nodes' environment: DDS at its defaults (every DDS variable removed), or confined (both)."""
    env = {k: v for k, v in os.environ.items() if k not in DDS_VARIABLES}
    if localhost_only:
        env = localhost_dds_env(env)
    env.update(ROS_DOMAIN_ID=str(domain_id), HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1', ROS_LOG_DIR=str(log_dir))
    return env


def run_two_computers(net, tmp_path, localhost_only: bool):
    """Start B (trainer, query, probe) then A (replay, capture); return (processes, probe result, veth bytes)."""
    params = tmp_path / 'params.yaml'
    data = json.loads(json.dumps(PARAMS))
    data['/**']['ros__parameters'].update(dataset_dir=str(tmp_path / 'scan'), checkpoint_dir=str(tmp_path / 'ckpt'))
    params.write_text(yaml.safe_dump(data))
    (tmp_path / 'probe.py').write_text(PROBE)
    domain = pick_domain_id()
    env = environment(domain, localhost_only, tmp_path / 'ros_log')
    procs = NamespaceProcesses(tmp_path / 'logs')
    before = rx_bytes(net['b'], net['vb'])
    try:
        procs.node('trainer', net['b'], env, params)
        procs.node('query', net['b'], env, params)
        mode, seconds = ('observe', 12.0) if localhost_only else ('until-found', 200.0)
        procs.node('replay', net['a'], env, params)
        procs.node('capture', net['a'], env, params)
        procs.wait_for('capture', r'keyframe 5 at', 120)  # A is publishing keyframes
        procs.start('probe', net['b'], env, [str(tmp_path / 'probe.py'), mode, str(seconds), str(domain)])
        result = procs.probe_result(seconds + 90)
        received = rx_bytes(net['b'], net['vb']) - before
        trainer_log = procs.log('trainer')
        return procs, result, received, trainer_log
    finally:
        procs.stop_all()


def test_default_dds_finds_the_other_computer_and_answers_across_the_link(two_computers, tmp_path):
    from f3rm_ros_interfaces.msg import QueryAnswer
    procs, result, received, trainer_log = run_two_computers(two_computers, tmp_path, localhost_only=False)
    keyframes = len(re.findall(r'keyframe [\d.]+ s added', trainer_log))
    detail = f'{result}\n{procs.tails()}'
    assert {'capture', 'replay', 'trainer', 'query'} <= set(result['nodes']), detail
    assert keyframes >= 6, detail
    assert result['answers'] and result['answers'][-1][0] == QueryAnswer.FOUND, detail
    # Every keyframe the trainer took came over the veth: its pixels alone are this many bytes.
    assert received >= keyframes * WIDTH * HEIGHT * 3, (received, keyframes)
    print(f'two namespaces, default DDS: {keyframes} keyframes across the veth ({received / 1e6:.2f} MB received '
          f'in B), "mug" answered {result["answers"][-1]} after {len(result["answers"])} call(s)')


def test_localhost_only_finds_no_peer_on_the_other_computer(two_computers, tmp_path):
    from f3rm_ros_interfaces.msg import QueryAnswer
    procs, result, received, trainer_log = run_two_computers(two_computers, tmp_path, localhost_only=True)
    detail = f'{result}\n{procs.tails()}'
    keyframes = len(re.findall(r'keyframe [\d.]+ s added', trainer_log))
    assert 'capture' not in result['nodes'] and 'replay' not in result['nodes'], detail
    assert {'trainer', 'query'} <= set(result['nodes']), detail  # B's own nodes are found (same machine)
    assert keyframes == 0, detail
    assert result['answers'] and result['answers'][-1][0] == QueryAnswer.NO_MODEL, detail
    print(f'two namespaces, localhost_only: B sees {result["nodes"]}, 0 keyframes, "mug" -> '
          f'{result["answers"][-1]}; {received} bytes on the veth')


def test_probes_of_one_process_never_share_a_domain():
    """A module's fixture and a test's own probe, alive together, must not hear each other's servers."""
    domains = [pick_domain_id() for _ in range(100)]
    assert sorted(domains) == list(range(100, 200))
