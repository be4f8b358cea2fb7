"""package.xml names exactly the ROS packages the code imports, under names rosdep resolves.

The imports of every module of f3rm_ros (and of the launch files) are read with `ast`, nested and guarded
ones included. A top-level module is a ROS package when the ament index knows it (the Kilted pip wheels
register theirs in the venv) or when it is one of the ROS Python packages that have no pip wheel
(`NOT_ON_PIP`). Each must be an <exec_depend> (or <depend>) under its rosdep name (``tf2_ros`` is the C++
package; Python's ``import tf2_ros`` comes from ``tf2_ros_py``), and every ROS package package.xml names must
be imported, except rviz2, which only the launch files start. ``python3-*`` keys must be ones rosdistro's
rosdep/python.yaml defines (checked by hand: `ROSDEP_PYTHON_KEYS`), and a library with such a key must be
declared when the code imports it.
"""
import ast
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from repo_root import ROOT

# ROS Python packages without pip wheels (shared/notes/ros-toolchain.md), by module name -> rosdep name.
NOT_ON_PIP = {'tf2_ros': 'tf2_ros_py', 'launch': 'launch', 'launch_ros': 'launch_ros', 'tf2_msgs': 'tf2_msgs',
              'tf2_py': 'tf2_py', 'tf2_geometry_msgs': 'tf2_geometry_msgs', 'cv_bridge': 'cv_bridge',
              'message_filters': 'message_filters', 'sensor_msgs_py': 'sensor_msgs_py',
              'image_geometry': 'image_geometry', 'diagnostic_updater': 'diagnostic_updater',
              'composition_interfaces': 'composition_interfaces', 'rosbag2_py': 'rosbag2_py',
              'ros2cli': 'ros2cli'}
# Keys present in ros/rosdistro rosdep/python.yaml (read 2026-12-01). python3-torch is not one: torch and the
# rest of the ML stack come from requirements-ml.txt.
ROSDEP_PYTHON_KEYS = {'python3-numpy', 'python3-opencv', 'python3-yaml', 'python3-scipy', 'python3-skimage',
                      'python3-matplotlib', 'python3-tqdm', 'python3-pytest', 'python3-flake8',
                      'python3-flake8-docstrings'}
KEY_OF_MODULE = {'numpy': 'python3-numpy', 'cv2': 'python3-opencv', 'yaml': 'python3-yaml', 'scipy': 'python3-scipy',
                 'skimage': 'python3-skimage', 'matplotlib': 'python3-matplotlib', 'tqdm': 'python3-tqdm'}
DEPEND_TAGS = ('depend', 'exec_depend', 'build_depend', 'build_export_depend', 'test_depend', 'buildtool_depend')


def manifest():
    """{tag: [names]} of package.xml, after checking it is format 3 and named f3rm_ros."""
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.tag == 'package' and root.get('format') == '3', 'package.xml must be format 3'
    assert root.findtext('name') == 'f3rm_ros'
    assert root.find('export/build_type').text == 'ament_python'
    return {tag: [e.text.strip() for e in root.findall(tag)] for tag in DEPEND_TAGS}


def imported_modules():
    """{top-level module: [files importing it]} of f3rm_ros/**.py and launch/*.py (every import statement)."""
    found = {}
    for path in sorted(list((ROOT / 'f3rm_ros').rglob('*.py')) + list((ROOT / 'launch').glob('*.py'))):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split('.')[0], set()).add(str(path.relative_to(ROOT)))
    return found


def ament_packages():
    """Names in every ament index this environment can see (the venv's, and AMENT_PREFIX_PATH's)."""
    prefixes = [Path(sys.prefix)] + [Path(p) for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    names = set()
    for prefix in prefixes:
        index = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages'
        if index.is_dir():
            names |= {p.name for p in index.iterdir()}
    return names


def ros_imports():
    """{rosdep name: [files]} for every imported module that is a ROS package."""
    known = ament_packages()
    assert {'rclpy', 'std_msgs', 'sensor_msgs'} <= known, f'no ament index with the ROS wheels under {sys.prefix}'
    out = {}
    for module, files in imported_modules().items():
        if module == 'f3rm_ros' or module in sys.stdlib_module_names:
            continue
        if module in NOT_ON_PIP:
            out[NOT_ON_PIP[module]] = files
        elif module in known:
            out[module] = files
    return out


def test_package_xml_declares_every_ros_package_the_code_imports():
    deps = manifest()
    runtime = set(deps['depend']) | set(deps['exec_depend'])
    imported = ros_imports()
    assert {'rclpy', 'f3rm_ros_interfaces', 'rcl_interfaces', 'tf2_ros_py', 'launch', 'launch_ros'} <= set(imported)
    missing = {name: sorted(files) for name, files in imported.items() if name not in runtime}
    assert not missing, f'imported but not an exec_depend of package.xml: {missing}'


def test_package_xml_names_no_ros_package_the_code_does_not_use():
    deps = manifest()
    runtime = set(deps['depend']) | set(deps['exec_depend'])
    ros_declared = {name for name in runtime if not name.startswith('python3-')}
    launch_text = ''.join(p.read_text() for p in (ROOT / 'launch').glob('*.launch.py'))
    started = {'rviz2'} if "executable='rviz2'" in launch_text else set()
    unused = ros_declared - set(ros_imports()) - started
    assert not unused, f'package.xml depends on {sorted(unused)}, which no module imports and no launch file starts'
    assert 'tf2_ros' not in runtime, 'tf2_ros is the C++ package; Python imports tf2_ros from tf2_ros_py'
    if not started:
        assert 'rviz2' not in runtime


def test_python_dependencies_use_rosdep_keys_that_exist():
    deps = manifest()
    keys = {name for tag in DEPEND_TAGS for name in deps[tag] if name.startswith('python3-')}
    unknown = keys - ROSDEP_PYTHON_KEYS
    assert not unknown, f'not rosdep keys (rosdep install would stop): {sorted(unknown)}'
    runtime = set(deps['depend']) | set(deps['exec_depend'])
    modules = imported_modules()
    missing = {KEY_OF_MODULE[m]: sorted(files) for m, files in modules.items()
               if m in KEY_OF_MODULE and KEY_OF_MODULE[m] not in runtime}
    assert not missing, f'imported, with a rosdep key, but not declared: {missing}'


def test_the_checker_sees_nested_and_guarded_imports(tmp_path):
    """The capture node imports tf2_ros inside try/except: the walk must find it (not only module-level)."""
    modules = imported_modules()
    assert 'f3rm_ros/ros/capture_node.py' in modules['tf2_ros']
    assert any(f.startswith('launch/') for f in modules['launch_ros'])
