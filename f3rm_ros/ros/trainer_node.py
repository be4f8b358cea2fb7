"""trainer node: keyframes → a feature field trained online in a background thread.

Inputs (relative names: remap them to a capture node's outputs, as the launch files and ``f3rm-ros pipeline`` do,
``keyframe/image:=capture/keyframe/image`` ...): ``keyframe/{image,camera_info,pose,depth,labels,mask}``
(reassembled by stamp; mask: mono8, 0 = pixels never trained on), ``keyframe/label_names`` and ``keyframe/scan``
(the capture's scan id: a new one drops the model and every keyframe, so ``capture/new_scan`` starts both afresh). A
full store keeps coverage: a new keyframe replaces the most redundant view. Nothing is read from disk at start-up
unless ``resume: true`` (then the scan in ``dataset_dir`` and ``checkpoint_dir/latest.ckpt``, so a restarted trainer
goes on where it stopped; a checkpoint that is unreadable, unsafe or of another scan is refused with the reason).
Outputs: the status on ``/diagnostics`` (state, step, loss, PSNR, rays/s, frames, teacher, queue ...; ERROR when
training stalls or checkpoints cannot be written, WARN for a teacher that is not semantic or not the one asked for)
at ``status_rate_hz``, ``~/checkpoint`` (String path, reliable + transient local), ``~/scene_changes``
(``f3rm_ros_interfaces/msg/SceneChange``, reliable + transient local, the last 10: every change detected in a new
keyframe or declared, with its box in the base frame; the status says the last one). Services (std_srvs/Trigger):
``~/save``, ``~/pause``, ``~/resume``, ``~/reset`` (drops the model and every keyframe); ``~/declare_change``
(``f3rm_ros_interfaces/srv/DeclareChange``: "I picked from this box", repaired as a detected change).
Random-weight CLIP is refused unless ``allow_random_teacher: true``. The training loop lives in
`f3rm_ros.core.training.online.OnlineSession`; this node only translates messages.
"""
from __future__ import annotations

import time
from typing import Optional

from f3rm_ros_interfaces.msg import SceneChange
from f3rm_ros_interfaces.srv import DeclareChange
from geometry_msgs.msg import Point, PoseStamped
import rclpy.logging
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from ..core.capture.frames import PosedFrame
from ..core.teachers import teacher_parts
from ..core.training.assembly import StampAssembler
from ..core.training.online import OnlineSession, SessionSettings
from . import conversions as conv
from .common import expand_path, node_main, set_torch_threads
from .diagnostics import NodeDiagnostics, ProblemLog, host_name, worse
from .logs import route_core_logging, unroute_core_logging
from .maturity import MaturityPublisher
from .params import NodeParameters, non_negative, one_of, ParamSpec, positive
from .qos import latched_qos, make_qos, QOS_CHOICES


def teacher_choice(value) -> Optional[str]:
    """Check a teacher_choice: 'auto' or teacher names joined by + (a validator)."""
    if value == 'auto':
        return None
    try:
        teacher_parts(value)
    except ValueError as error:
        return str(error)
    return None


PARAMETERS = [
    ParamSpec('dataset_dir', '', "the capture node's scan folder, read at start-up with resume ('' = none)"),
    ParamSpec('checkpoint_dir', '', "where latest.ckpt is written ('' = no checkpoints)"),
    ParamSpec('resume', False, 'continue the scan in dataset_dir and checkpoint_dir/latest.ckpt (false: a new '
              'scan; an old latest.ckpt is kept as previous.ckpt)'),
    ParamSpec('allow_random_teacher', False, 'distil random-weight CLIP (not semantic: plumbing tests only) '
              'instead of refusing to train without CLIP weights or labels'),
    ParamSpec('stall_timeout_s', 120.0, 'status ERROR after this long without a training step while it should '
              'train (s)', validator=positive),
    ParamSpec('min_frames', 5, 'keyframes before training starts', validator=positive),
    ParamSpec('teacher_choice', 'auto', 'auto | clip | labels | dino | custom, or several joined by + for one '
              'feature head each (clip+dino: CLIP answers text, DINO for matching; the text teacher is the first '
              'head) (auto: teacher.name, falling back when CLIP weights are missing)', validator=teacher_choice),
    ParamSpec('steps_per_new_frame', 20, 'steps added per keyframe arriving after the step budget is spent',
              validator=non_negative),
    ParamSpec('input_qos', 'latched', 'QoS of the keyframe inputs: ' + ' | '.join(QOS_CHOICES)
              + " (latched matches the capture node's outputs)", validator=one_of(*QOS_CHOICES)),
    ParamSpec('assembly_wait_s', 2.0, 'how long the parts of one keyframe may trickle in (s)', validator=positive),
    ParamSpec('status_rate_hz', 1.0, 'rate of the status on /diagnostics (Hz)', validator=positive),
    ParamSpec('hardware_id', '', "hardware_id of the status on /diagnostics ('' = host/device)"),
    ParamSpec('torch_threads', 0, 'torch CPU threads of this process (0 = torch default; 1 is best when node '
              'processes share a few cores)', validator=non_negative),
    ParamSpec('autostart', True, 'train as soon as min_frames keyframes exist (else wait for ~/resume)'),
    ParamSpec('settle_window_steps', 100, 'steps the field must stay unchanged, with no new keyframe, before '
              '~/maturity (and every answer from this model) says settled (steps, >= 1)', validator=positive),
    ParamSpec('settle_threshold', 0.02, 'the largest field change over a settle window that counts as unchanged: '
              'mean opacity change plus mean feature (1 - cosine) change over the occupied probe points (> 0; '
              'see ModelMaturity.msg)', validator=positive),
]
CONFIG_SECTIONS = ('workspace', 'feature_field', 'model', 'trainer', 'teacher', 'changes')

KEYFRAME_TOPICS = ('image', 'camera_info', 'pose', 'depth', 'labels', 'mask', 'label_names', 'scan')
# how long a problem keeps the status at WARN, and how long without a keyframe publisher before it says so (s)
PROBLEM_WINDOW_S = 10.0
UNCONNECTED_S = 10.0
# How long a shutting-down node waits for the training thread before it saves without it (s).
STOP_WAIT_S = 2.0


class TrainerNode(Node):
    """Online training (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__('trainer', **kwargs)
        self.params = NodeParameters(self, PARAMETERS, CONFIG_SECTIONS)
        p = self.params
        set_torch_threads(p['torch_threads'])
        self.config = p.config
        self.base_frame = self.config.workspace.base_frame
        self.problems = ProblemLog(self.get_logger())
        route_core_logging(self, ('f3rm_ros.core.training', 'f3rm_ros.core.teachers', 'f3rm_ros.core.fast'))
        settings = SessionSettings(min_frames=p['min_frames'], dataset_dir=expand_path(p['dataset_dir']),
                                   checkpoint_dir=expand_path(p['checkpoint_dir']), resume=p['resume'],
                                   teacher_choice=p['teacher_choice'], allow_random_teacher=p['allow_random_teacher'],
                                   steps_per_new_frame=p['steps_per_new_frame'], stall_timeout_s=p['stall_timeout_s'])
        self.pub_checkpoint = self.create_publisher(String, '~/checkpoint', latched_qos())
        # transient local: a planner that subscribes after a change still learns its last answers may be stale
        self.pub_changes = self.create_publisher(SceneChange, '~/scene_changes', latched_qos(depth=10))
        self.session = OnlineSession(self.config, settings, on_checkpoint=self._on_checkpoint,
                                     on_change=self._on_scene_change)
        if settings.dataset_dir or settings.checkpoint_dir:
            summary = self.session.resume_from_disk()
            if summary['frames'] or summary['checkpoint']:
                self.get_logger().info(f'resuming scan {summary["scan_id"] or "(no id)"}: {summary["frames"]} '
                                       f'keyframes from {settings.dataset_dir}'
                                       + (f', checkpoint {summary["checkpoint"]}' if summary['checkpoint'] else ''))
            elif summary['previous']:
                self.get_logger().info(f'a new scan (resume: false): the last checkpoint is kept as '
                                       f'{summary["previous"]}')
        self.assembler = StampAssembler(('image', 'camera_info', 'pose'), ('depth', 'labels', 'mask'),
                                        wait_s=p['assembly_wait_s'])
        qos = make_qos(p['input_qos'], depth=16)
        for part, kind in (('image', Image), ('camera_info', CameraInfo), ('pose', PoseStamped),
                           ('depth', Image), ('labels', Image), ('mask', Image)):
            subscription = self.create_subscription(kind, f'keyframe/{part}',
                                                    lambda msg, part=part: self._on_part(part, msg), qos)
            if part == 'image':
                self.image_subscription = subscription
        self.create_subscription(String, 'keyframe/label_names', self._on_label_names, latched_qos())
        self.create_subscription(String, 'keyframe/scan', self._on_scan, latched_qos())
        self._started = time.monotonic()
        self.create_service(Trigger, '~/save', self._on_save)
        self.create_service(Trigger, '~/pause', lambda req, res: self._trigger(res, self.session.pause))
        self.create_service(Trigger, '~/resume', lambda req, res: self._trigger(res, self.session.resume))
        self.create_service(Trigger, '~/reset', lambda req, res: self._trigger(res, self.session.reset))
        self.create_service(DeclareChange, '~/declare_change', self._on_declare_change)
        self.create_timer(0.1, self._poll)
        self.diagnostics = NodeDiagnostics(self, p['status_rate_hz'], self._health, self._hardware_id,
                                           problems=self.problems)
        self.maturity = MaturityPublisher(self, self.session, p['settle_window_steps'], p['settle_threshold'],
                                          1.0 / p['status_rate_hz'])
        if not p['autostart']:
            self.session.pause()
        self.session.start()

    # ------------------------------------------------------------------------------------------ inputs

    def _on_part(self, part: str, msg) -> None:
        done, problems = self.assembler.add(part, conv.stamp_to_seconds(msg.header.stamp), msg)
        for problem in problems:
            self.problems.report('assembly', problem)
        for stamp, parts in done:
            self._add_keyframe(stamp, parts)

    def _poll(self) -> None:
        done, problems = self.assembler.poll()
        for problem in problems:
            self.problems.report('assembly', problem)
        for stamp, parts in done:
            self._add_keyframe(stamp, parts)

    def _add_keyframe(self, stamp: float, parts) -> None:
        try:
            pose = parts['pose']
            if pose.header.frame_id != self.base_frame:
                raise ValueError(f'pose is in frame {pose.header.frame_id!r}, expected {self.base_frame!r}')
            K, width, height = conv.camera_info_to_K(parts['camera_info'])
            rgb = conv.image_to_rgb(parts['image'])
            if rgb.shape[:2] != (height, width):
                raise ValueError(f'image is {rgb.shape[1]} x {rgb.shape[0]}, camera_info {width} x {height}')
            depth = conv.depth_to_metres(parts['depth']) if 'depth' in parts else None
            labels = conv.image_to_labels(parts['labels']) if 'labels' in parts else None
            mask = conv.image_to_mask(parts['mask']) if 'mask' in parts else None   # mono8, 0 = not the scene
            frame = PosedFrame(rgb, K, conv.pose_to_matrix(pose.pose), stamp=stamp, depth=depth, labels=labels,
                               mask=mask)
        except ValueError as error:
            self.problems.report('keyframe', f'keyframe {stamp:.3f} s ignored: {error}')
            return
        added, why = self.session.add_frame(frame)
        if added:
            self.maturity.note_keyframe()
            self.get_logger().info(f'keyframe {stamp:.3f} s added ({len(self.session.store)} held)'
                                   + (f': {why}' if why else ''))
        else:
            self.problems.report('keyframe', f'keyframe {stamp:.3f} s not added: {why}',
                                 level='debug' if 'already held' in why else 'warn')

    def _on_scan(self, msg: String) -> None:
        if self.session.set_scan(msg.data):
            self.get_logger().info(f'new scan {msg.data}: model and keyframes dropped')

    def _on_label_names(self, msg: String) -> None:
        try:
            self.session.set_labels(conv.decode_label_names(msg.data))
        except ValueError as error:
            self.problems.report('label_names', f'label_names ignored: {error}')

    # ------------------------------------------------------------------------------------------ outputs

    def _on_checkpoint(self, path) -> None:
        if not self.context.ok():  # the last save while shutting down: nobody to tell
            return
        self.pub_checkpoint.publish(String(data=str(path)))
        self.get_logger().info(f'checkpoint {path} (step {self.session.step})')

    def _change_message(self, event) -> SceneChange:
        """Return the `SceneChange` message of a `core.changes.tracker.SceneChange` event."""
        return SceneChange(header=conv.make_header(self.base_frame, event.stamp),
                           min=Point(x=float(event.min_xyz[0]), y=float(event.min_xyz[1]), z=float(event.min_xyz[2])),
                           max=Point(x=float(event.max_xyz[0]), y=float(event.max_xyz[1]), z=float(event.max_xyz[2])),
                           kind=SceneChange.DECLARED if event.kind == 'declared' else SceneChange.DETECTED,
                           voxels=int(event.voxels), frames_masked=int(event.frames_masked),
                           pixels_masked=int(event.pixels_masked), reason=event.reason)

    def _on_scene_change(self, event) -> None:
        if not self.context.ok():
            return
        self.pub_changes.publish(self._change_message(event))
        self.get_logger().warning(f'scene change {event.summary()}')

    def _on_declare_change(self, request: DeclareChange.Request, response: DeclareChange.Response):
        frame = request.header.frame_id
        stamp = conv.stamp_to_seconds(request.header.stamp)
        try:
            if frame and frame != self.base_frame:
                raise ValueError(f'the box is in frame {frame!r}; declare it in {self.base_frame!r}')
            event = self.session.declare_change((request.min.x, request.min.y, request.min.z),
                                                (request.max.x, request.max.y, request.max.z), request.reason,
                                                stamp=stamp if stamp > 0 else None)
        except ValueError as error:
            response.success, response.message = False, str(error)
            self.problems.report('declare_change', f'declared change refused: {error}')
            return response
        response.success, response.message = True, event.summary()
        response.change = self._change_message(event)
        return response

    def _health(self):
        """(level, message, values) of the status on /diagnostics (`NodeDiagnostics`)."""
        values = self.session.status()
        values['assembling'] = len(self.assembler.pending)
        values['problems'] = sum(self.problems.counts.values())
        values['last_problem'] = self.problems.last_problem
        values['preset'] = self.params.preset_reason     # which sizes train here, and why (preset auto)
        health = worse(self.session.health(), self.problems.recent(PROBLEM_WINDOW_S))
        topic = self.image_subscription.topic_name
        if (health[0] == 'ok' and not values['frames'] and self.image_subscription.get_publisher_count() == 0
                and time.monotonic() - self._started > UNCONNECTED_S):
            health = ('warn', f'nothing publishes on {topic}: remap keyframe/* to the capture node\'s '
                              '~/keyframe/* (the launch files and f3rm-ros pipeline do)')
        level, why = health
        state = values['state']
        message = (f'{state}: step {values["step"]}/{values["target_steps"]}, {values["frames"]} keyframes'
                   + (f'; {why}' if why else ''))
        return level, message, values

    def _hardware_id(self) -> str:
        if self.params['hardware_id']:
            return self.params['hardware_id']
        trainer = self.session.trainer
        return f'{host_name()}/{trainer.device if trainer is not None else self.config.trainer.device}'

    def _on_save(self, request, response):
        try:
            response.message = str(self.session.save())
            response.success = True
        except RuntimeError as error:
            response.message = str(error)
            response.success = False
        return response

    def _trigger(self, response, action):
        response.message = action()
        response.success = True
        self.get_logger().info(response.message)
        return response

    def destroy_node(self):
        """Stop training (within one step or one teacher chunk) and save a last checkpoint.

        ``ros2 launch`` sends SIGTERM 5 s after SIGINT: the wait for the training thread is bounded by
        STOP_WAIT_S, and a consistent checkpoint is written without waiting for a step in progress (the state
        copied after the last long step, `OnlineSession.save_without_waiting`).
        """
        name, level, message = self.get_name(), 'info', ''
        try:
            self.session.stop(timeout=STOP_WAIT_S, save=True)
            if self.session.trainer is not None and self.session.checkpoints.path is not None:
                # the step written, not the step reached: a long step still in progress is not in the file
                checkpoints = self.session.checkpoints
                message = f'final checkpoint {checkpoints.path} (step {checkpoints.saved_step})'
        except Exception as error:  # e.g. disk full: say so, and still release the node
            level, message = 'error', f'last checkpoint not written: {type(error).__name__}: {error}'
        result = super().destroy_node()
        unroute_core_logging(self)
        if message:  # logged once the node is gone: after SIGINT its /rosout publisher cannot publish any more
            getattr(rclpy.logging.get_logger(name), level)(message)
        return result


def main(args=None) -> int:
    """``ros2 run f3rm_ros trainer_node``."""
    return node_main(TrainerNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
