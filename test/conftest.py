"""The suite's markers: ``ros``, ``slow`` and ``cuda``.

``make test-fast`` runs ``-m "not ros and not slow"`` (the edit-test loop); ``make test`` runs everything.
``workspace`` builds both packages with colcon once for the session (every launch test shares it).
A test marked ``cuda`` is skipped without a CUDA device, saying why (``@pytest.mark.cuda(why='...')``).
"""
import pytest
import torch

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
