"""Scan and train: capture + trainer + query nodes (optionally a replayed arm and RViz).

    ros2 launch f3rm_ros scan_and_train.launch.py image:=/camera/color/image_raw \
        camera_info:=/camera/color/camera_info rviz:=true
    ros2 launch f3rm_ros scan_and_train.launch.py replay:=true rviz:=true   # a synthetic table, no robot

Parameters come from `params_file` (default: the package's config/f3rm.yaml; `/**` for every node plus a
section per node name). Poses come from TF (base_frame <- the image's optical frame) where tf2 runs, else
from the `camera_pose` PoseStamped topic. Then: ros2 topic pub --once /query/query std_msgs/String "data: mug"
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

INPUTS = ('image', 'camera_info', 'camera_pose', 'depth', 'labels', 'label_names')


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
    ]
    defaults = {'image': 'image', 'camera_info': 'camera_info', 'camera_pose': 'camera_pose',
                'depth': 'depth', 'labels': 'labels', 'label_names': 'label_names'}
    for name in INPUTS:
        arguments.append(DeclareLaunchArgument(name, default_value=defaults[name],
                                               description=f'topic remapped to the capture input {name!r}'))
    remaps = [(name, LaunchConfiguration(name)) for name in INPUTS]
    nodes = [
        Node(package='f3rm_ros', executable='replay_node', name='replay', output='screen',
             parameters=[params, {'dataset': LaunchConfiguration('dataset')}], remappings=remaps,
             condition=IfCondition(LaunchConfiguration('replay'))),
        Node(package='f3rm_ros', executable='capture_node', name='capture', output='screen',
             parameters=[params], remappings=remaps),
        Node(package='f3rm_ros', executable='trainer_node', name='trainer', output='screen',
             parameters=[params]),
        Node(package='f3rm_ros', executable='query_node', name='query', output='screen',
             parameters=[params]),
        Node(package='rviz2', executable='rviz2', name='rviz2', output='log',
             arguments=['-d', os.path.join(share, 'config', 'f3rm.rviz')],
             condition=IfCondition(LaunchConfiguration('rviz'))),
    ]
    return LaunchDescription(arguments + nodes)
