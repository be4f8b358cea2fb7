"""The ROS workspace path: this repo in `ws/src/f3rm_ros`, built by colcon, then both launch files run for real.

The repo root is the ament_python package f3rm_ros, and colcon stops descending at the first package.xml, so
the nested f3rm_ros_interfaces (ament_cmake) is given as a second base path: the README's command. colcon and
the ament/rosidl build tools come from pip (scripts/colcon_tools.sh, scripts/setup.sh): no ROS install is
needed. After `source install/setup.bash` in a clean environment, both packages resolve in the ament index,
the node executables are where `ros2 run` / launch look, and the messages import from the workspace.

Then, from that sourced install, with the real launch library (`launch_support`: a ROS install's, else
../shared/vendor/ros2_launch and ../shared/tools/ros2-launch):
* ``scan_and_train.launch.py replay:=true localhost_only:=true`` (cpu-tiny, a 16-view synthetic table): every
  node comes up with both DDS variables set by launch, keyframes flow, the trainer checkpoints, a planner's
  ``/query/locate`` call is answered; then Ctrl-C (SIGINT to launch and every node, as a terminal sends it)
  ends every process within launch's 5 s SIGINT timeout with exit code 0, and the trainer's final checkpoint
  (a step after the last periodic one) is on disk and loads.
* ``query.launch.py checkpoint:=...`` (no localhost_only: the environment's DDS settings reach the node
  unchanged) serves that checkpoint; SIGINT to launch alone ends it cleanly too.
colcon runs once for the module (a module-scoped fixture). The test's own environment confines DDS explicitly.
"""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from launch_support import SIGTERM_TIMEOUT_S, LaunchRun, launch_command
from repo_root import ROOT

pytestmark = pytest.mark.ros

VENV_PYTHON = ROOT / '.venv' / 'bin' / 'python'
COLCON = ROOT / 'scripts' / 'colcon_tools.sh'
COPY_IGNORE = ('.git', '.venv', 'build', 'install', 'log', 'outputs', '__pycache__', '.pytest_cache', '*.egg-info',
               '.whl', '.device')


def copy_repo(dest):
    """Copy the working tree as a clone would have it, uncommitted and untracked (not ignored) files included."""
    listed = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:  # not a git checkout (an exported tarball): everything but the build outputs
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*COPY_IGNORE), dirs_exist_ok=True)
        return
    for name in filter(None, listed.stdout.decode().split('\0')):
        source = ROOT / name
        if source.is_file():  # tracked files deleted in the working tree are listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def clean_env(**extra):
    """Return the environment of a fresh shell: no ROS, colcon or python paths from this process."""
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'LD_LIBRARY_PATH', 'AMENT_PREFIX_PATH', 'CMAKE_PREFIX_PATH',
                        'COLCON_PREFIX_PATH', '_ROS_WHEELS_BOOTSTRAP_COMPLETE', 'VIRTUAL_ENV')}
    env.update(extra)
    return env


CHECK = '''
import sys
from pathlib import Path
from ament_index_python.packages import get_package_share_directory, get_package_prefix
install = Path(sys.argv[1]).resolve()
for package in ('f3rm_ros', 'f3rm_ros_interfaces'):
    share = Path(get_package_share_directory(package)).resolve()
    assert share == install / package / 'share' / package, (package, share)
    assert (share / 'package.xml').is_file(), share
launch = Path(get_package_share_directory('f3rm_ros')) / 'launch'
assert sorted(p.name for p in launch.glob('*.launch.py')), launch
import f3rm_ros_interfaces
from f3rm_ros_interfaces.msg import QueryAnswer, GraspCandidate
from f3rm_ros_interfaces.srv import Query
assert Path(f3rm_ros_interfaces.__file__).resolve().is_relative_to(install / 'f3rm_ros_interfaces'), \\
    f3rm_ros_interfaces.__file__
from rclpy.serialization import deserialize_message, serialize_message
answer = QueryAnswer(text='mug', grasps=[GraspCandidate(width=0.04)])
response = deserialize_message(serialize_message(Query.Response(answer=answer)), Query.Response)
assert response.answer.text == 'mug' and abs(response.answer.grasps[0].width - 0.04) < 1e-6
print('ok')
'''


def build_workspace(ws):
    """ws/ with this repo in src/ and both packages built by colcon: (ws, colcon result, seconds).

    conftest.py's session-scoped `workspace` fixture calls it once for every module that launches from it.
    """
    repo = ws / 'src' / 'f3rm_ros'
    repo.mkdir(parents=True)
    copy_repo(repo)
    subprocess.run([str(COLCON)], check=True, timeout=300)  # installs colcon once; instant afterwards
    started = time.monotonic()
    build = subprocess.run(
        [str(COLCON), 'build', '--base-paths', 'src', 'src/f3rm_ros/f3rm_ros_interfaces',
         '--packages-up-to', 'f3rm_ros',
         '--event-handlers', 'console_direct-', 'console_start_end+', 'summary+',
         '--cmake-args', f'-DPython3_EXECUTABLE={VENV_PYTHON}', '-DBUILD_TESTING=OFF', '-G', 'Ninja'],
        cwd=ws, env=clean_env(), capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    logs = ''.join(p.read_text(errors='replace') for p in (ws / 'log').glob('latest_build/*/stdout_stderr.log'))
    assert build.returncode == 0, build.stdout + build.stderr + logs[-4000:]
    return ws, build, seconds


def test_colcon_builds_both_packages_and_the_sourced_install_resolves_them(workspace):
    ws, build, seconds = workspace
    out = build.stdout
    assert 'Summary: 2 packages finished' in out, out
    # f3rm_ros's <exec_depend>f3rm_ros_interfaces</exec_depend>: colcon builds the interfaces first.
    assert out.index('Finished <<< f3rm_ros_interfaces') < out.index('Starting >>> f3rm_ros\n'), out

    install = ws / 'install'
    for node in ('capture_node', 'trainer_node', 'query_node', 'replay_node', 'f3rm-ros'):
        script = install / 'f3rm_ros' / 'lib' / 'f3rm_ros' / node
        assert script.is_file() and os.access(script, os.X_OK), script
        shebang = script.read_text().splitlines()[0]
        assert shebang.endswith('/.venv/bin/python') and os.path.samefile(shebang[2:], VENV_PYTHON), shebang
    assert (install / 'f3rm_ros_interfaces' / 'share' / 'f3rm_ros_interfaces' / 'srv' / 'Query.srv').is_file()
    assert (install / 'f3rm_ros' / 'share' / 'f3rm_ros' / 'config' / 'fastdds_localhost.xml').is_file()

    shell = subprocess.run(
        ['bash', '-c', 'source install/setup.bash && "$0" -c "$1" "$2"', str(VENV_PYTHON), CHECK, str(install)],
        cwd=ws, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert shell.returncode == 0 and shell.stdout.strip() == 'ok', shell.stdout + shell.stderr
    print(f'colcon build of both packages: {seconds:.1f} s')


# ------------------------------------------------------------------------------------------------ launch

DDS_VARIABLES = ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'FASTDDS_DEFAULT_PROFILES_FILE')
REPO_PROFILE = ROOT / 'config' / 'fastdds_localhost.xml'


def launch_env(domain_id: int, log_dir: Path) -> dict:
    """Return a fresh shell's environment plus what the test chooses: DDS on this machine (explicitly), its domain."""
    return clean_env(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
                     FASTDDS_DEFAULT_PROFILES_FILE=str(REPO_PROFILE), HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1',
                     ROS_LOG_DIR=str(log_dir), RCUTILS_COLORIZED_OUTPUT='0')


def start_launch(ws: Path, launch_file: str, arguments, env: dict, log: Path) -> LaunchRun:
    """Start ``source install/setup.bash`` then the launch, in its own process group (see launch_support)."""
    command = ['bash', '-c', 'source install/setup.bash && exec "$@"', 'launch',
               *launch_command('f3rm_ros', launch_file, arguments)]
    return LaunchRun(command, ws, env, log)


def process_environment(pid: int) -> dict:
    """Return the environment a running process was started with (/proc/PID/environ)."""
    raw = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
    return dict(item.decode(errors='replace').split('=', 1) for item in raw if b'=' in item)


def ask(probe, positives, timeout: float = 90.0):
    """Call the query node's Query service like a planner; returns the QueryAnswer."""
    from f3rm_ros_interfaces.srv import Query
    return probe.call(Query, '/query/locate', Query.Request(positives=list(positives)), timeout=timeout).answer


def check_shutdown(run: LaunchRun, expected: int, code: int) -> dict:
    """Every process ended cleanly inside launch's SIGINT timeout; returns {label: seconds}."""
    ends = run.ends()
    detail = json.dumps({k: vars(v) for k, v in ends.items()}, indent=1) + '\n' + run.tail(40)
    assert len(ends) == expected and all(end.clean for end in ends.values()), detail
    assert max(end.seconds for end in ends.values()) < SIGTERM_TIMEOUT_S, detail
    assert not run.escalations(), detail
    # launch itself took the SIGINT (not just went idle once its nodes had ended: one that ignores SIGINT does so)
    assert 'user interrupted with ctrl-c (SIGINT)' in run.text(), detail
    assert code == 0, detail
    assert 'Traceback' not in run.text(), run.text()[-6000:]
    return {label: round(end.seconds, 2) for label, end in ends.items()}


SCAN_PARAMS = {
    '/**': {'ros__parameters': {
        'preset': 'cpu-tiny',
        'trainer': {'steps': 2000, 'checkpoint_every': 20, 'eval_every': 0},
    }},
    'capture': {'ros__parameters': {'min_interval_s': 0.0, 'min_sharpness': 0.0}},
    'trainer': {'ros__parameters': {'min_frames': 6, 'torch_threads': 1}},
    'query': {'ros__parameters': {'image_width': 64, 'image_height': 48, 'torch_threads': 1}},
    'replay': {'ros__parameters': {'scene_views': 16, 'scene_width': 96, 'scene_height': 72, 'rate_hz': 4.0,
                                   'start_delay_s': 1.0}},
}


def checkpoint_line(steps: str = r'\d+') -> str:
    """Pattern of the trainer's periodic checkpoint log line (group 2: the step)."""
    return rf'\[trainer\]: checkpoint (\S+latest\.ckpt) \(step ({steps})\)'


@pytest.fixture(scope='module')
def scan_run(workspace, tmp_path_factory):
    """scan_and_train.launch.py replay:=true localhost_only:=true, a query, then Ctrl-C: what happened."""
    from f3rm_ros.harness.testing import RosProbe
    ws = workspace[0]
    work = tmp_path_factory.mktemp('scan_launch')
    params = yaml.safe_load(json.dumps(SCAN_PARAMS))
    params['/**']['ros__parameters'].update(dataset_dir=str(work / 'scan'), checkpoint_dir=str(work / 'ckpt'))
    (work / 'params.yaml').write_text(yaml.safe_dump(params))
    probe = RosProbe()
    record, run = {'log': work / 'launch.log'}, None
    try:
        run = start_launch(ws, 'scan_and_train.launch.py',
                           ['replay:=true', 'localhost_only:=true', f'params_file:={work / "params.yaml"}'],
                           launch_env(probe.domain_id, work / 'ros_log'), work / 'launch.log')
        for label in ('replay_node', 'capture_node', 'trainer_node', 'query_node'):
            run.wait_for(rf'\[INFO\] \[{label}-\d+\]: process started with pid', 60)
        record['environments'] = {label: {k: process_environment(pid).get(k) for k in DDS_VARIABLES}
                                  for label, pid in run.pids().items()}
        run.wait_for(r'\[trainer\]: keyframe .* added', 120)
        step = int(run.wait_for(checkpoint_line(), 180).group(2))
        asked = time.monotonic()
        record['answer'] = ask(probe, ['mug'])
        record['answer_s'] = time.monotonic() - asked
        # SIGINT in the middle of training, a few steps after a periodic checkpoint: the last one must come from
        # the stop (the trainer's /diagnostics status says when it has gone past the periodic step).
        from f3rm_ros.ros.diagnostics import status_values
        trainer_status = probe.status('/trainer')
        later = '|'.join(str(step + 20 * k) for k in range(1, 6))
        periodic = record['periodic_step'] = int(run.wait_for(checkpoint_line(later), 120).group(2))
        trainer_status.wait(lambda msg: int(status_values(msg).get('step', 0)) >= periodic + 2, 60,
                            f'the trainer past step {periodic + 1}')
        run.interrupt(whole_group=True)
        record['code'] = run.wait(30)
        record['run'] = run
        yield record
    finally:
        if run is not None:
            run.kill()
        probe.close()


def test_scan_and_train_launch_brings_up_every_node_with_localhost_dds_and_answers_a_query(workspace, scan_run):
    ws = workspace[0]
    run = scan_run['run']
    assert 'localhost_only: DDS confined to this machine' in run.text(), run.tail()
    profile = str(ws / 'install' / 'f3rm_ros' / 'share' / 'f3rm_ros' / 'config' / 'fastdds_localhost.xml')
    # The launch set both variables for every process it started (the test's own profile path was another one).
    assert len(scan_run['environments']) == 4
    for label, env in scan_run['environments'].items():
        assert env == {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST', 'FASTDDS_DEFAULT_PROFILES_FILE': profile}, label
    from f3rm_ros_interfaces.msg import QueryAnswer
    answer = scan_run['answer']
    assert answer.status in (QueryAnswer.FOUND, QueryAnswer.NOT_PRESENT), (answer.status, answer.reason)
    assert list(answer.positives) == ['mug']
    print(f'scan_and_train: /query/locate "mug" -> status {answer.status} ({answer.reason}) in '
          f'{scan_run["answer_s"]:.1f} s')


def test_ctrl_c_ends_every_process_cleanly_and_the_final_checkpoint_loads(scan_run):
    from f3rm_ros.core.training.trainer import load_model
    run = scan_run['run']
    seconds = check_shutdown(run, 4, scan_run['code'])
    final = re.search(r'\[trainer\]: final checkpoint (\S+) \(step (\d+)\)', run.text())
    assert final, run.tail()
    path, step = Path(final.group(1)), int(final.group(2))
    assert step > scan_run['periodic_step'], (step, scan_run['periodic_step'])  # written by the stop, not before
    model, config, state = load_model(path, device='cpu')
    assert state['step'] == step and config.workspace.base_frame == 'base_link'
    scan_run['checkpoint'] = path
    print(f'scan_and_train Ctrl-C: every process ended in {seconds} s (launch escalates after '
          f'{SIGTERM_TIMEOUT_S:.0f} s); final checkpoint step {step} (last periodic {scan_run["periodic_step"]})')


def test_query_launch_serves_the_checkpoint(workspace, scan_run, tmp_path):
    from f3rm_ros.harness.testing import RosProbe
    from f3rm_ros_interfaces.msg import QueryAnswer
    ws = workspace[0]
    checkpoint = scan_run.get('checkpoint')
    assert checkpoint is not None and checkpoint.is_file(), 'the scan_and_train run left no checkpoint'
    params = tmp_path / 'params.yaml'
    params.write_text(yaml.safe_dump({'/**': {'ros__parameters': {'preset': 'cpu-tiny'}},
                                      'query': SCAN_PARAMS['query']}))
    probe, run = RosProbe(name='f3rm_probe_query'), None
    try:
        run = start_launch(ws, 'query.launch.py',
                           [f'checkpoint:={checkpoint}', f'params_file:={params}', 'device:=cpu'],
                           launch_env(probe.domain_id, tmp_path / 'ros_log'), tmp_path / 'launch.log')
        run.wait_for(r'\[INFO\] \[query_node-\d+\]: process started with pid', 60)
        (label, pid), = run.pids().items()
        # Without localhost_only the node gets the environment's DDS settings as they are.
        env = process_environment(pid)
        assert {k: env.get(k) for k in DDS_VARIABLES} == {'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
                                                          'FASTDDS_DEFAULT_PROFILES_FILE': str(REPO_PROFILE)}
        assert 'localhost_only' not in run.text()
        answer = ask(probe, ['mug'])
        assert answer.status in (QueryAnswer.FOUND, QueryAnswer.NOT_PRESENT), (answer.status, answer.reason)
        run.interrupt(whole_group=False)  # SIGINT to launch alone: launch forwards it
        seconds = check_shutdown(run, 1, run.wait(30))
    finally:
        if run is not None:
            run.kill()
        probe.close()
    print(f'query.launch: "mug" -> status {answer.status} ({answer.reason}); SIGINT to launch: ended in {seconds} s')
