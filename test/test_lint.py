"""Lint (flake8 + pep257 docstring checks as configured in setup.cfg) and the ROS-free core rule."""
import ast
import subprocess
import sys

from repo_root import ROOT


def test_flake8_and_docstrings_are_clean():
    result = subprocess.run([sys.executable, '-m', 'flake8'], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_under_core_imports_rclpy_or_ros_messages():
    ros_modules = {'rclpy', 'sensor_msgs', 'std_msgs', 'geometry_msgs', 'visualization_msgs', 'std_srvs',
                   'tf2_ros', 'builtin_interfaces', 'diagnostic_msgs'}
    offenders = []
    for path in (ROOT / 'f3rm_ros' / 'core').rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f'{path.relative_to(ROOT)}: {n}' for n in names if n.split('.')[0] in ros_modules]
    assert not offenders, offenders


def test_core_imports_without_rclpy_in_a_fresh_interpreter():
    code = ('import sys, importlib, pkgutil, f3rm_ros.core as core\n'
            'for m in pkgutil.walk_packages(core.__path__, "f3rm_ros.core."): importlib.import_module(m.name)\n'
            'assert "rclpy" not in sys.modules, "rclpy was imported"\n')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_project_cites_nothing_outside_itself():
    """Docstrings, comments and docs state their reason or point into docs/, never at a tracker or a missing file."""
    import re
    pattern = re.compile(r'DESIGN\.md|issue [0-9]')
    paths = [ROOT / 'README.md', *(ROOT / 'docs').rglob('*.md'), *(ROOT / 'f3rm_ros').rglob('*.py'),
             *(ROOT / 'test').rglob('*.py')]
    hits = [f'{path.relative_to(ROOT)}:{number}: {line.strip()}' for path in paths
            for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, '\n'.join(hits)
