"""`LaunchRun` (launch_support): a launch stops on a SIGINT sent to it alone, however pytest was started.

A shell without job control makes its background jobs ignore SIGINT (``nohup make test > log &`` in a script),
the launch process inherited that, and launch (which only watches the signals Python handles) dropped the
SIGINT test_workspace_build sends it: "launch still running 30 s after SIGINT". Here pytest's SIGINT is set to
ignored, as such a start leaves it, while LaunchRun starts a minimal launch (the real launch library, one
``sleep`` process); then SIGINT to launch alone must end it, through launch's own Ctrl-C path.
"""
import signal
import sys
import time

import pytest
from launch_support import VENDOR, LaunchRun

pytestmark = pytest.mark.ros

LAUNCH = '''
import sys
try:  # a ROS install's launch, else the vendored sources (launch_support.import_launch)
    import launch
    launch.LaunchDescription
except (ImportError, AttributeError):
    for name in [n for n in sys.modules if n.split('.')[0] == 'launch']:
        del sys.modules[name]
    sys.path.insert(0, sys.argv[1])
    import launch
service = launch.LaunchService(noninteractive=True)
service.include_launch_description(launch.LaunchDescription([
    launch.actions.ExecuteProcess(cmd=['sleep', '600'], output='screen')]))
sys.exit(service.run())
'''


@pytest.mark.parametrize('pytest_sigint', ['ignored', 'default'])
def test_launch_stops_on_sigint_to_it_alone_whatever_sigint_pytest_inherited(pytest_sigint, tmp_path):
    env = {'PATH': '/usr/bin:/bin', 'ROS_LOG_DIR': str(tmp_path / 'ros_log'), 'PYTHONUNBUFFERED': '1'}
    handler = signal.SIG_IGN if pytest_sigint == 'ignored' else signal.default_int_handler
    previous = signal.signal(signal.SIGINT, handler)  # what the launch process would inherit from pytest
    try:
        run = LaunchRun([sys.executable, '-c', LAUNCH, str(VENDOR)], tmp_path, env, tmp_path / 'launch.log')
    finally:  # None: a handler installed in C (rclpy's), which Python cannot put back: Python's default then
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    try:
        run.wait_for(r'\[INFO\] \[sleep-\d+\]: process started with pid', 60)
        run.interrupt(whole_group=False)
        run.wait(15)  # on timeout: 'launch still running 15 s after SIGINT (SIGINT is ignored in ...)'
        seconds = time.monotonic() - run.interrupted_at
    finally:
        run.kill()
    assert 'user interrupted with ctrl-c (SIGINT)' in run.text(), run.tail()
    print(f'SIGINT {pytest_sigint} in pytest: launch ended {seconds:.2f} s after SIGINT')
