"""QoS of the f3rm_ros topics: named profiles, and camera inputs that follow ROS's sensor conventions.

Camera inputs (image, depth, camera_info, pose, labels) default to sensor-data QoS (best effort, keep last 5):
a best-effort subscription matches both best-effort drivers (v4l2_camera, Isaac Sim, many RealSense set-ups)
and reliable ones, while a reliable subscription never hears a best-effort publisher. Each such input
declares the standard ``qos_overrides.<topic>.subscription.{reliability,history,depth}`` parameters
(rclpy's `QoSOverridingOptions`), so a user changes them per topic at start-up, e.g. in a params file:

    capture:
      ros__parameters:
        qos_overrides:
          /camera/color/image_raw:          # the resolved (remapped) topic name
            subscription: {reliability: reliable, depth: 10}

Outputs that are maps or answers are reliable + transient local (`latched_qos`).
"""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions

QOS_CHOICES = ('reliable', 'best_effort', 'sensor_data', 'latched')
SENSOR_DEPTH = 5


def make_qos(name: str, depth: int = 10) -> QoSProfile:
    """Return the QoS named: reliable | best_effort | sensor_data (best effort, depth 5) | latched.

    latched = reliable + transient local.
    """
    if name not in QOS_CHOICES:
        raise ValueError(f'QoS must be one of {QOS_CHOICES}, got {name!r}')
    if name == 'sensor_data':
        return sensor_qos()
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=(ReliabilityPolicy.BEST_EFFORT if name == 'best_effort'
                                   else ReliabilityPolicy.RELIABLE),
                      durability=(DurabilityPolicy.TRANSIENT_LOCAL if name == 'latched'
                                  else DurabilityPolicy.VOLATILE))


def sensor_qos(depth: int = SENSOR_DEPTH) -> QoSProfile:
    """Return ROS's sensor-data QoS: best effort, keep last `depth`, volatile (rclpy's qos_profile_sensor_data)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


def latched_qos(depth: int = 1) -> QoSProfile:
    """Reliable + transient local: late subscribers get the newest `depth` messages (maps, paths)."""
    return make_qos('latched', depth)


def sensor_subscription(node, msg_type, topic: str, callback, depth: int = SENSOR_DEPTH, **kwargs):
    """Subscribe to a sensor input with sensor-data QoS and the standard ``qos_overrides`` parameters."""
    return node.create_subscription(msg_type, topic, callback, sensor_qos(depth),
                                    qos_overriding_options=QoSOverridingOptions.with_default_policies(),
                                    **kwargs)
