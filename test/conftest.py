"""The suite's markers: ``ros``, ``slow`` and ``cuda``.

``make test-fast`` runs ``-m "not ros and not slow"`` (the edit-test loop); ``make test`` runs everything.
``workspace`` builds both packages with colcon once for the session (every launch test shares it).
A test marked ``cuda`` is skipped without a CUDA device, saying why (``@pytest.mark.cuda(why='...')``).
"""
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

# Tests import by bare module name the helpers in this folder (analytic_field, launch_support, repo_root,
# study_support, triton_interpreter) and, in a few places, each other (test_ros_manipulation takes
# test_manipulation's tool scene, test_ros_grasps test_ros_query's live session, the `workspace` fixture below
# test_workspace_build's build). So this folder and every sub-folder holding tests go on sys.path here, before
# any test module is imported, whichever files or -k selection run: pytest's default import mode ("prepend")
# adds a test's folder only when it imports that test file. Done here rather than with `pythonpath` in
# setup.cfg: one list of folders to keep in step with the tree is one too many. It needs unique basenames.
HERE = Path(__file__).resolve().parent
TEST_FOLDERS = sorted({path.parent for path in HERE.rglob('test_*.py')} | {HERE})
TWICE = [name for name, count in Counter(path.name for path in HERE.rglob('*.py')).items() if count > 1]
assert not TWICE, f'module names under test/ must be unique (they are imported by bare name): {TWICE}'
for folder in reversed(TEST_FOLDERS):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

MARKERS = {
    'ros': 'starts ROS 2 processes, a launch or DDS traffic (a private domain on this machine)',
    'slow': 'trains a field or runs a whole command for tens of seconds or more',
    'cuda': 'needs a CUDA device (skipped without one)',
}


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line('markers', f'{name}: {text}')


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    for item in items:
        marker = item.get_closest_marker('cuda')
        if marker is not None:
            why = marker.kwargs.get('why')
            item.add_marker(pytest.mark.skip(reason='no CUDA device' + (f': {why}' if why else '')))


@pytest.fixture(scope='session')
def workspace(tmp_path_factory):
    """Build a colcon workspace with this repository in src/, both packages: (ws, colcon result, seconds)."""
    from test_workspace_build import build_workspace
    return build_workspace(tmp_path_factory.mktemp('colcon') / 'ws')
