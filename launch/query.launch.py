"""Query a saved checkpoint: the query node alone (and optionally RViz).

Usage:
    ros2 launch f3rm_ros query.launch.py checkpoint:=$HOME/.ros/f3rm/checkpoints/latest.ckpt rviz:=true
    ros2 topic pub --once /query/query std_msgs/String "data: mug"

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


def generate_launch_description():
    """Build the launch description."""
    share = get_package_share_directory('f3rm_ros')
    return LaunchDescription([
        DeclareLaunchArgument('checkpoint', description='checkpoint file (latest.ckpt of a trainer run)'),
        DeclareLaunchArgument('params_file', default_value=os.path.join(share, 'config', 'f3rm.yaml'),
                              description='ROS parameters YAML (query settings: query.* and the query section)'),
        DeclareLaunchArgument('device', default_value='auto', description='auto | cpu | cuda'),
        DeclareLaunchArgument('rviz', default_value='false', description='start RViz with config/f3rm.rviz'),
        *localhost_only_actions(share),
        Node(package='f3rm_ros', executable='query_node', name='query', output='screen',
             parameters=[LaunchConfiguration('params_file'),
                         {'checkpoint': LaunchConfiguration('checkpoint'),
                          'device': LaunchConfiguration('device')}],
             # checkpoint:='' follows a running trainer's announcements instead
             remappings=[('checkpoint', 'trainer/checkpoint'), ('maturity', 'trainer/maturity'),
                         ('scene_changes', 'trainer/scene_changes')]),
        Node(package='rviz2', executable='rviz2', name='rviz2', output='log',
             arguments=['-d', os.path.join(share, 'config', 'f3rm.rviz')],
             condition=IfCondition(LaunchConfiguration('rviz'))),
    ])
