"""The ROS workspace path: this repo in `ws/src/f3rm_ros`, built by colcon with its interface package.

The repo root is the ament_python package f3rm_ros, and colcon stops descending at the first package.xml, so
the nested f3rm_ros_interfaces (ament_cmake) is given as a second base path: the README's command. colcon and
the ament/rosidl build tools come from pip (scripts/colcon_tools.sh, scripts/setup.sh): no ROS install is
needed. After `source install/setup.bash` in a clean environment, both packages resolve in the ament index,
the node executables are where `ros2 run` / launch look, and the messages import from the workspace.
"""
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / '.venv' / 'bin' / 'python'
COLCON = ROOT / 'scripts' / 'colcon_tools.sh'
COPY_IGNORE = ('.git', '.venv', 'build', 'install', 'log', 'outputs', '__pycache__', '.pytest_cache', '*.egg-info',
               '.whl', '.device')


def copy_repo(dest):
    """Copy the working tree as a clone would have it, uncommitted and untracked (not ignored) files included."""
    listed = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:  # not a git checkout (an exported tarball): everything but the build outputs
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*COPY_IGNORE))
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


def test_colcon_builds_both_packages_and_the_sourced_install_resolves_them(tmp_path):
    ws = tmp_path / 'ws'
    repo = ws / 'src' / 'f3rm_ros'
    repo.mkdir(parents=True)
    copy_repo(repo)

    subprocess.run([str(COLCON)], check=True, timeout=300)  # installs colcon once; instant afterwards
    build = subprocess.run(
        [str(COLCON), 'build', '--base-paths', 'src', 'src/f3rm_ros/f3rm_ros_interfaces',
         '--packages-up-to', 'f3rm_ros',
         '--event-handlers', 'console_direct-', 'console_start_end+', 'summary+',
         '--cmake-args', f'-DPython3_EXECUTABLE={VENV_PYTHON}', '-DBUILD_TESTING=OFF', '-G', 'Ninja'],
        cwd=ws, env=clean_env(), capture_output=True, text=True, timeout=600)
    logs = ''.join(p.read_text(errors='replace') for p in (ws / 'log').glob('latest_build/*/stdout_stderr.log'))
    assert build.returncode == 0, build.stdout + build.stderr + logs[-4000:]
    out = build.stdout
    assert 'Summary: 2 packages finished' in out, out
    # f3rm_ros's <exec_depend>f3rm_ros_interfaces</exec_depend>: colcon builds the interfaces first.
    assert out.index('Finished <<< f3rm_ros_interfaces') < out.index('Starting >>> f3rm_ros\n'), out

    install = ws / 'install'
    for node in ('capture_node', 'trainer_node', 'query_node', 'replay_node'):
        script = install / 'f3rm_ros' / 'lib' / 'f3rm_ros' / node
        assert script.is_file() and os.access(script, os.X_OK), script
        shebang = script.read_text().splitlines()[0]
        assert shebang.endswith('/.venv/bin/python') and os.path.samefile(shebang[2:], VENV_PYTHON), shebang
    assert (install / 'f3rm_ros_interfaces' / 'share' / 'f3rm_ros_interfaces' / 'srv' / 'Query.srv').is_file()

    shell = subprocess.run(
        ['bash', '-c', 'source install/setup.bash && "$0" -c "$1" "$2"', str(VENV_PYTHON), CHECK, str(install)],
        cwd=ws, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert shell.returncode == 0 and shell.stdout.strip() == 'ok', shell.stdout + shell.stderr
