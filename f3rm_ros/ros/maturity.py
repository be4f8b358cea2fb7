"""The trainer's ``~/maturity`` (``f3rm_ros_interfaces/msg/ModelMaturity``): how far its model has trained.

`MaturityPublisher` runs a `core.training.maturity.MaturityTracker` on the trainer node's timer and publishes
what it says (reliable + transient local: a query node started later still gets the last one). Query nodes
subscribe to ``maturity`` (remapped to the trainer's, `topics.query_remaps`) and put the maturity of the model
they answered from into every ``QueryAnswer``.
"""
from __future__ import annotations

from f3rm_ros_interfaces.msg import ModelMaturity

from ..core.training.maturity import Maturity, MaturityTracker
from .qos import latched_qos


def maturity_message(maturity: Maturity) -> ModelMaturity:
    """Convert a core `Maturity` to a ``ModelMaturity``."""
    return ModelMaturity(step=int(maturity.step), target_steps=int(maturity.target_steps),
                         keyframes=int(maturity.keyframes), since_last_keyframe_s=float(maturity.since_keyframe_s),
                         checkpoint=maturity.checkpoint, checkpoint_time=float(maturity.checkpoint_time),
                         field_change=float(maturity.change), settled=bool(maturity.settled),
                         settled_since_step=int(maturity.settled_since_step), trainer_state=maturity.state)


class MaturityPublisher:
    """Publishes a session's maturity on ``~/maturity`` of `node` every `period_s` (see the module docstring)."""

    def __init__(self, node, session, window_steps: int, threshold: float, period_s: float = 1.0):
        self.node = node
        self.tracker = MaturityTracker(session, window_steps, threshold)
        self.publisher = node.create_publisher(ModelMaturity, '~/maturity', latched_qos())
        self.timer = node.create_timer(period_s, self.publish)
        self.last = None

    def note_keyframe(self) -> None:
        """Record a keyframe added now: unsettled at once (published now, not at the next tick)."""
        self.tracker.note_keyframe()
        self.publish()

    def publish(self) -> ModelMaturity:
        """Update the tracker, publish its maturity and return the message."""
        self.last = maturity_message(self.tracker.update())
        self.publisher.publish(self.last)
        return self.last
