"""Scan and train: capture + trainer + query nodes (optionally a replayed arm and RViz).

    ros2 launch f3rm_ros scan_and_train.launch.py image:=/camera/color/image_raw \
        camera_info:=/camera/color/camera_info rviz:=true
    ros2 launch f3rm_ros scan_and_train.launch.py replay:=true rviz:=true   # a synthetic table, no robot

Parameters come from `params_file` (default: the package's config/f3rm.yaml; `/**` for every node plus a
section per node name). Poses come from TF (base_frame <- the image's optical frame) where tf2 runs, else
from the `camera_pose` PoseStamped topic. Then: ros2 topic pub --once /query/query std_msgs/String "data: mug"

Every launch starts a new scan (the capture's dataset_dir is emptied, an old checkpoint kept as previous.ckpt)
unless `resume:=true`; `ros2 service call /capture/new_scan std_srvs/srv/Trigger` starts a new one for capture
and trainer together. The trainer's inputs `keyframe/*` are remapped to the capture's `~/keyframe/*` and the
query node's `checkpoint` to the trainer's `~/checkpoint` (f3rm_ros/ros/topics.py): rename a node here and
both ends follow. `replay:=true` also allows a random-weight CLIP teacher (a dataset without labels on a
machine without CLIP weights); a live robot refuses it unless the params file sets allow_random_teacher.

DDS is left as the environment has it (ROS_AUTOMATIC_DISCOVERY_RANGE, the middleware's profiles): nodes on
other computers (a camera driver, RViz) are found. `localhost_only:=true` keeps every process this file starts
(RViz included) on this machine: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and the packaged Fast DDS profile
config/fastdds_localhost.xml (shared memory + UDP on 127.0.0.1).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from f3rm_ros.launch_actions import localhost_only_actions

INPUTS = ('image', 'camera_info', 'camera_pose', 'depth', 'labels', 'mask', 'label_names')
KEYFRAME_PARTS = ('image', 'camera_info', 'pose', 'depth', 'labels', 'mask', 'label_names', 'scan')


def generate_launch_description():
    """Build the launch description."""
    share = get_package_share_directory('f3rm_ros')
    params = LaunchConfiguration('params_file')
    arguments = [
        DeclareLaunchArgument('params_file', default_value=os.path.join(share, 'config', 'f3rm.yaml'),
                              description='ROS parameters YAML for every node'),
        DeclareLaunchArgument('replay', default_value='false',
                              description='also play a dataset (or a synthetic table) as the camera'),
        DeclareLaunchArgument('dataset', default_value='',
                              description="dataset folder for replay ('' = synthetic table)"),
        DeclareLaunchArgument('rviz', default_value='false', description='start RViz with config/f3rm.rviz'),
        DeclareLaunchArgument('resume', default_value='false',
                              description='continue the scan in dataset_dir and the last checkpoint (default: a '
                                          'new scan)'),
    ]
    resume, replay = LaunchConfiguration('resume'), LaunchConfiguration('replay')
    defaults = {'image': 'image', 'camera_info': 'camera_info', 'camera_pose': 'camera_pose',
                'depth': 'depth', 'labels': 'labels', 'mask': 'mask', 'label_names': 'label_names'}
    for name in INPUTS:
        arguments.append(DeclareLaunchArgument(name, default_value=defaults[name],
                                               description=f'topic remapped to the capture input {name!r}'))
    remaps = [(name, LaunchConfiguration(name)) for name in INPUTS]
    nodes = [
        Node(package='f3rm_ros', executable='replay_node', name='replay', output='screen',
             parameters=[params, {'dataset': LaunchConfiguration('dataset')}], remappings=remaps,
             condition=IfCondition(LaunchConfiguration('replay'))),
        Node(package='f3rm_ros', executable='capture_node', name='capture', output='screen',
             parameters=[params, {'resume': resume}], remappings=remaps),
        # the trainer hears the node named 'capture' above, the query node the one named 'trainer' (renaming
        # one: change its remaps too; an unconnected trainer says so on /diagnostics)
        Node(package='f3rm_ros', executable='trainer_node', name='trainer', output='screen',
             parameters=[params, {'resume': resume, 'allow_random_teacher': replay}],
             remappings=[(f'keyframe/{part}', f'capture/keyframe/{part}') for part in KEYFRAME_PARTS]),
        Node(package='f3rm_ros', executable='query_node', name='query', output='screen',
             parameters=[params, {'allow_random_teacher': replay}],
             remappings=[('checkpoint', 'trainer/checkpoint'), ('maturity', 'trainer/maturity'),
                         ('scene_changes', 'trainer/scene_changes')]),
        Node(package='rviz2', executable='rviz2', name='rviz2', output='log',
             arguments=['-d', os.path.join(share, 'config', 'f3rm.rviz')],
             condition=IfCondition(LaunchConfiguration('rviz'))),
    ]
    return LaunchDescription(arguments + localhost_only_actions(share) + nodes)
