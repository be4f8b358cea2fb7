"""Launch files and the shared YAML are valid for a real ROS 2 install, checked without starting ROS.

The files are compiled and parsed: every executable a launch file names must be a console script of
setup.py pointing at a node module, and every parameter it passes (inline dicts, and the node sections of
config/f3rm.yaml) must be one that node declares. The descriptions are also built and their DDS actions
evaluated with the real launch library (a ROS install's, else ../shared/vendor/ros2_launch: launch and
launch_ros have no pip wheels). test_workspace_build.py runs both files for real from a colcon install.
"""
import ast
import importlib
import re

import pytest
import yaml
from repo_root import ROOT

pytestmark = pytest.mark.ros

LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))
NODE_NAMES = {'capture': 'capture_node', 'trainer': 'trainer_node', 'query': 'query_node', 'replay': 'replay_node'}


def console_scripts():
    """{script name: 'module:function'} from setup.py's entry_points (parsed, not run)."""
    tree = ast.parse((ROOT / 'setup.py').read_text())
    scripts = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == 'console_scripts':
                    for item in value.elts:
                        name, target = (part.strip() for part in item.value.split('='))
                        scripts[name] = target
    return scripts


def declared(executable):
    """Parameter names the node behind a console script declares (from its static tables)."""
    from f3rm_ros.ros.params import declared_names
    module = importlib.import_module(console_scripts()[executable].split(':')[0])
    return set(declared_names(module.PARAMETERS, getattr(module, 'CONFIG_SECTIONS', ())))


def launch_nodes(path):
    """Return [(executable, name, [inline parameter names])] of each launch_ros Node(...) of a launch file."""
    nodes = []
    for call in ast.walk(ast.parse(path.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, 'id', '') == 'Node':
            keywords = {k.arg: k.value for k in call.keywords}
            if keywords['package'].value != 'f3rm_ros':
                continue
            inline = []
            for item in getattr(keywords.get('parameters'), 'elts', []):
                if isinstance(item, ast.Dict):
                    inline += [key.value for key in item.keys]
            nodes.append((keywords['executable'].value, keywords['name'].value, inline))
    return nodes


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_compiles_and_names_real_executables_and_parameters(path):
    compile(path.read_text(), str(path), 'exec')
    nodes = launch_nodes(path)
    assert nodes, f'{path.name} starts no f3rm_ros node'
    scripts = console_scripts()
    for executable, name, inline in nodes:
        assert executable in scripts, f'{path.name}: {executable} is not a console script in setup.py'
        assert scripts[executable] == f'f3rm_ros.ros.{executable}:main'
        assert NODE_NAMES[name] == executable, f'{path.name}: node name {name} does not match {executable}'
        unknown = set(inline) - declared(executable)
        assert not unknown, f'{path.name}: {executable} does not declare {sorted(unknown)}'


def test_both_launch_files_exist_and_remap_the_capture_inputs():
    assert {p.name for p in LAUNCH_FILES} >= {'scan_and_train.launch.py', 'query.launch.py'}
    text = (ROOT / 'launch' / 'scan_and_train.launch.py').read_text()
    for topic in ('image', 'camera_info', 'camera_pose'):
        assert re.search(rf"'{topic}'", text)
    assert 'f3rm.rviz' in text and "executable='rviz2'" in text


def test_shared_yaml_sections_use_only_declared_parameters():
    data = yaml.safe_load((ROOT / 'config' / 'f3rm.yaml').read_text())
    everyone = set()
    for name, executable in NODE_NAMES.items():
        names = declared(executable)
        everyone |= names
        section = data.get(name, {}).get('ros__parameters', {})
        unknown = set(section) - names
        assert not unknown, f'config/f3rm.yaml section {name}: {executable} does not declare {sorted(unknown)}'

    def flat(mapping, prefix=''):
        for key, value in mapping.items():
            if isinstance(value, dict):
                yield from flat(value, f'{prefix}{key}.')
            else:
                yield prefix + key
    unknown = set(flat(data['/**']['ros__parameters'])) - everyone
    assert not unknown, f'config/f3rm.yaml /** sets parameters no node declares: {sorted(unknown)}'


def test_yaml_is_also_a_core_config_overlay():
    from f3rm_ros.core.config import make_config
    config = make_config('cpu-tiny', [ROOT / 'config' / 'f3rm.yaml'])
    assert config.query.negatives == ('object', 'things', 'stuff', 'texture')
    assert config.workspace.base_frame == 'base_link' and config.trainer.steps == 400  # the preset's


def test_rviz_config_shows_the_heatmap_by_similarity():
    rviz = yaml.safe_load((ROOT / 'config' / 'f3rm.rviz').read_text())
    displays = {d['Name']: d for d in rviz['Visualization Manager']['Displays']}
    heatmap = displays['Heatmap (similarity)']
    assert heatmap['Topic']['Value'] == '/query/heatmap' and heatmap['Channel Name'] == 'similarity'
    assert heatmap['Topic']['Durability Policy'] == 'Transient Local'
    assert rviz['Visualization Manager']['Global Options']['Fixed Frame'] == 'base_link'
    topics = {d['Topic']['Value'] for d in displays.values() if 'Topic' in d}
    assert {'/query/markers', '/query/grasp_candidates', '/capture/keyframe/image'} <= topics


def load_description(path, monkeypatch):
    """generate_launch_description() of a launch file, its share folder faked as the source tree."""
    import importlib.util

    import ament_index_python.packages as packages
    from launch_support import import_launch
    import_launch()
    monkeypatch.setattr(packages, 'get_package_share_directory', lambda name: str(ROOT))
    spec = importlib.util.spec_from_file_location('launch_under_test', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_description_builds_with_the_real_launch_library(path, monkeypatch):
    description = load_description(path, monkeypatch)
    assert description.entities
    arguments = {a.name: a for a in description.get_launch_arguments()}
    assert {'localhost_only', 'rviz', 'params_file'} <= set(arguments)


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize('localhost_only', ['false', 'true'])
def test_localhost_only_sets_both_dds_variables_before_any_process(path, localhost_only, monkeypatch):
    """Default: the environment's DDS settings stay. localhost_only:=true: both variables, logged, for RViz too."""
    from launch_support import import_launch
    launch, launch_ros = import_launch()
    from launch.actions import DeclareLaunchArgument, LogInfo, SetEnvironmentVariable
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'SUBNET')
    monkeypatch.setenv('FASTDDS_DEFAULT_PROFILES_FILE', '/etc/robot_profile.xml')
    description = load_description(path, monkeypatch)
    context = launch.LaunchContext()
    context.launch_configurations.update({'localhost_only': localhost_only, 'checkpoint': 'x.ckpt'})
    logged, first_process = [], None
    for index, entity in enumerate(description.entities):
        if isinstance(entity, launch_ros.actions.Node):
            first_process = index if first_process is None else first_process
            continue
        if isinstance(entity, DeclareLaunchArgument) or not (
                entity.condition is None or entity.condition.evaluate(context)):
            continue
        if isinstance(entity, SetEnvironmentVariable):
            assert first_process is None, 'DDS variables must be set before the first process starts'
            entity.visit(context)  # launch's context environment is the launch process's (inherited)
        elif isinstance(entity, LogInfo):
            logged.append(''.join(s.perform(context) for s in entity.msg))
    env = context.environment
    if localhost_only == 'true':
        assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
        assert env['FASTDDS_DEFAULT_PROFILES_FILE'] == str(ROOT / 'config' / 'fastdds_localhost.xml')
        assert any('localhost_only' in line and 'LOCALHOST' in line for line in logged), logged
    else:
        assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'SUBNET'
        assert env['FASTDDS_DEFAULT_PROFILES_FILE'] == '/etc/robot_profile.xml'
        assert not logged
    text = path.read_text()
    assert "executable='rviz2'" in text  # RViz is one of the processes started after the variables
