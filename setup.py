"""ament_python package definition; also installs with pip into a plain virtual environment."""
from glob import glob

from setuptools import find_packages, setup

package_name = 'f3rm_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.rviz')
         + glob('config/*.xml')),
        # robot examples: params files, a hand-eye file, a gripper mask (docs/robot-setup.md, "On your robot")
        ('share/' + package_name + '/config/robots', glob('config/robots/*')),
    ],
    package_data={package_name: ['config/*.yaml', 'config/*.xml']},
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='f3rm_ros maintainers',
    maintainer_email='f3rm-ros@example.org',
    description='Distilled feature fields (F3RM) for language-guided manipulation, as ROS 2 nodes.',
    license='Apache-2.0',
    entry_points={
        # ns-train f3rm-ros (nerfstudio finds methods through this group)
        'nerfstudio.method_configs': ['f3rm-ros = f3rm_ros.ns_plugin:f3rm_ros_method'],
        'console_scripts': [
            'f3rm-ros = f3rm_ros.cli:main',
            'capture_node = f3rm_ros.ros.capture_node:main',
            'trainer_node = f3rm_ros.ros.trainer_node:main',
            'query_node = f3rm_ros.ros.query_node:main',
            'replay_node = f3rm_ros.ros.replay_node:main',
        ],
    },
)
