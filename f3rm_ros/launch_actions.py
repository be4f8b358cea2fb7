"""Launch actions the package's launch files share (imports the ROS `launch` library: launch files only)."""
import os

from launch.actions import DeclareLaunchArgument, LogInfo, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration


def localhost_only_actions(share):
    """`localhost_only` argument; when true, both DDS variables for every process started after these actions."""
    enabled = IfCondition(LaunchConfiguration('localhost_only'))
    profile = os.path.join(share, 'config', 'fastdds_localhost.xml')
    return [
        DeclareLaunchArgument('localhost_only', default_value='false',
                              description='keep DDS on this machine (LOCALHOST discovery, loopback + shared memory '
                                          'Fast DDS profile) for every process started here, RViz included'),
        SetEnvironmentVariable('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST', condition=enabled),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', profile, condition=enabled),
        LogInfo(msg=f'localhost_only: DDS confined to this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, '
                    f'FASTDDS_DEFAULT_PROFILES_FILE={profile})', condition=enabled),
    ]
