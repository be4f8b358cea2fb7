"""Teach and ask by demonstration over ROS 2: the query node's services and action for few-shot manipulation.

Attached to the query node (it shares the node's model, its `FieldQuerier` and its one-question-at-a-time lock):

- ``~/record_demo`` (`RecordDemo`): the gripper pose from the request, or from TF (``base_frame`` <-
  ``grasp_frame`` at the request's stamp, waiting up to ``demo_tf_timeout_s``, the capture's lookup rules), read
  in the current field and appended to the task file under ``tasks_dir``;
- ``~/list_tasks`` (`ListTasks`), ``~/forget_demo`` (`ForgetDemo`);
- ``~/manipulate`` (action `Manipulate`): ranked 6-DOF poses for a task; feedback per stage with counts; cancel
  between optimisation steps;
- ``~/manipulation/answer`` (ManipulationAnswer), ``~/manipulation/poses`` (PoseArray, best first) and
  ``~/manipulation/markers`` (the gripper's finger and palm boxes at each pose), one header per answer, latched.

The work is `core.manipulation`; this module only translates.
"""
from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from f3rm_ros_interfaces.action import Manipulate
from f3rm_ros_interfaces.msg import ManipulationAnswer, ManipulationPose
from f3rm_ros_interfaces.srv import ForgetDemo, ListTasks, RecordDemo
from geometry_msgs.msg import PoseArray, Vector3
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from . import conversions as conv
from .answers import timing_messages
from .capture_inputs import TfPoseLookup
from .common import expand_path
from .params import ParamSpec, non_negative
from .qos import latched_qos
from ..core.manipulation.optimise import Cancelled, Manipulator, ManipulationResult
from ..core.manipulation.task import Task, TaskFileError, TaskLibrary, now_iso

try:  # tf2_ros has no pip wheel: without it demonstrations need a pose in the request
    import tf2_ros
except ImportError:
    tf2_ros = None

PARAMETERS = [
    ParamSpec('tasks_dir', '~/.ros/f3rm/tasks', 'folder of the task files (<name>.yaml + <name>.npz)'),
    ParamSpec('grasp_frame', 'tool0', 'TF frame of the gripper (origin between the fingertips, z = approach, '
              'y = closing): ~/record_demo reads base_frame <- grasp_frame when the request has no pose'),
    ParamSpec('demo_tf_timeout_s', 0.5, 'seconds ~/record_demo waits for TF at the request stamp', True,
              non_negative),
]
STATUS_CODES = {'found': ManipulationAnswer.FOUND, 'no_task': ManipulationAnswer.NO_TASK,
                'not_present': ManipulationAnswer.NOT_PRESENT, 'no_model': ManipulationAnswer.NO_MODEL,
                'error': ManipulationAnswer.ERROR}
# Gripper boxes in RViz: fingers, then the palm; best pose opaque, the rest fading.
FINGER_COLOUR, PALM_COLOUR = (0.1, 0.8, 0.3), (0.3, 0.3, 0.35)


class ManipulationServer:
    """Services, action and topics of teaching and asking (see the module docstring) on `node`.

    Args:
        node: the query node; its ``params`` hold `PARAMETERS` and the ``manipulation`` config section.
        source: returns (querier, model, lock) of the current model, or raises the node's "no model" error.
        no_model: the exception type `source` raises when there is no model (answered NO_MODEL).
        busy: the node's one-question-at-a-time lock (held for a whole request).
        base_frame: returns the robot's base frame (the answer's frame).
        tf_buffer: a tf2 buffer (anything with ``lookup_transform``) to use instead of creating one.
    """

    def __init__(self, node, source: Callable[[], Any], no_model: type, busy: threading.Lock,
                 base_frame: Callable[[], str], tf_buffer=None):
        self.node = node
        self.source = source
        self.no_model = no_model
        self.busy = busy
        self.base_frame = base_frame
        self._ids = itertools.count(1)
        self.tf_buffer = tf_buffer
        if tf_buffer is None and tf2_ros is not None:
            self.tf_buffer = tf2_ros.Buffer()
            self.tf_listener = tf2_ros.TransformListener(self.tf_buffer, node)
        self.answered = 0
        self.last = ''
        out = latched_qos()
        self.pub_answer = node.create_publisher(ManipulationAnswer, '~/manipulation/answer', out)
        self.pub_poses = node.create_publisher(PoseArray, '~/manipulation/poses', out)
        self.pub_markers = node.create_publisher(MarkerArray, '~/manipulation/markers', out)
        group = MutuallyExclusiveCallbackGroup()
        node.create_service(RecordDemo, '~/record_demo', self.on_record, callback_group=group)
        node.create_service(ListTasks, '~/list_tasks', self.on_list, callback_group=group)
        node.create_service(ForgetDemo, '~/forget_demo', self.on_forget, callback_group=group)
        self.action_server = ActionServer(node, Manipulate, '~/manipulate', execute_callback=self.on_goal,
                                          goal_callback=self.check_goal,
                                          cancel_callback=lambda _: CancelResponse.ACCEPT,
                                          callback_group=ReentrantCallbackGroup())

    @property
    def library(self) -> TaskLibrary:
        """The tasks under ``tasks_dir`` (read at every request: files may change between them)."""
        return TaskLibrary(Path(expand_path(self.node.params['tasks_dir'])))

    def manipulator(self) -> Manipulator:
        """Return a `Manipulator` on the current model with the node's manipulation settings."""
        querier, model, lock = self.source()
        config = dataclasses.replace(querier.config, manipulation=self.node.params.config.manipulation)
        return Manipulator(model, querier.teacher, config, lock=lock, querier=querier)

    # ------------------------------------------------------------------------------------------ teaching

    def demo_pose(self, request: RecordDemo.Request):
        """(T_base_gripper, source) of a request: its pose, or TF at its stamp; ValueError saying why not."""
        frame = self.base_frame()
        stamp = conv.stamp_to_seconds(request.pose.header.stamp)
        if request.pose.header.frame_id:
            if request.pose.header.frame_id != frame:
                raise ValueError(f'the pose is in {request.pose.header.frame_id!r}; give it in the base frame '
                                 f'{frame!r}, or leave frame_id empty to read TF')
            return conv.pose_to_matrix(request.pose.pose), 'pose'
        if self.tf_buffer is None:
            raise ValueError('no pose given and tf2_ros is not available: give the gripper pose in the request')
        if stamp <= 0:
            stamp = self.node.get_clock().now().nanoseconds * 1e-9
        lookup = TfPoseLookup(self.tf_buffer, frame, self.node.params['grasp_frame'],
                              timeout_s=self.node.params['demo_tf_timeout_s'])
        pose, how = lookup(stamp)
        if pose is None:
            raise ValueError(how)
        return pose, 'tf'

    def on_record(self, request: RecordDemo.Request, response: RecordDemo.Response) -> RecordDemo.Response:
        """Record one demonstration (see `RecordDemo.srv`); failures answer success=false with the reason."""
        response.success = False
        try:
            if not request.task.strip():
                raise ValueError('give a task name')
            kind = request.kind or 'grasp'
            if kind not in ('grasp', 'place'):
                raise ValueError(f"kind must be 'grasp' or 'place', got {request.kind!r}")
            pose, source = self.demo_pose(request)
            with self.busy:
                manipulator = self.manipulator()
                library = self.library
                stored = library.load(request.task) if library.exists(request.task) else None
                m = manipulator.config.manipulation
                geometry = manipulator.gripper.geometry
                width = float(request.width) or geometry.max_opening / 2
                if not 0 < width <= geometry.max_opening:
                    raise ValueError(f'width {width} m is outside 0..{geometry.max_opening} (the gripper\'s opening)')
                if stored is not None and stored.kind != kind:
                    raise ValueError(f'task {stored.name!r} is a {stored.kind} task, not {kind}')
                task = stored or Task(name=request.task.strip(), description=request.description.strip()
                                      or request.task.strip(), kind=kind, gripper=geometry, width=width,
                                      num_points=m.num_query_points, sigma=m.query_sigma, seed=m.query_seed,
                                      teacher=manipulator.teacher.name, base_frame=self.base_frame())
                reading = manipulator.embed(pose, task)
                info = self.node.model_info()
                demo = reading.demonstration(pose, source=source, checkpoint=str(info.get('path', '')),
                                             step=int(info.get('step', -1)), recorded=now_iso())
                task = library.record(task, demo)
            response.success = True
            response.demonstrations = len(task.demos)
            response.path = str(library.paths(task.name)[0])
            response.recorded_pose = conv.pose_stamped(pose, self.base_frame(), self.node.get_clock().now().to_msg())
            response.reason = (f'demonstration {len(task.demos)} of {task.name!r} recorded from {source} at '
                               f'{np.round(pose[:3, 3], 3).tolist()}')
            self.node.get_logger().info(response.reason)
        except self.no_model as error:
            response.reason = f'no model to read the demonstration in: {error}'
        except (ValueError, TaskFileError, IndexError, OSError) as error:
            response.reason = str(error)
        return response

    def on_list(self, request: ListTasks.Request, response: ListTasks.Response) -> ListTasks.Response:
        """List the task files (those that load, and why the others do not)."""
        library = self.library
        for task in library.load_all():
            response.names.append(task.name)
            response.descriptions.append(task.description)
            response.kinds.append(task.kind)
            response.demonstrations.append(len(task.demos))
        response.problems = [f'{name}: {reason}' for name, reason in library.problems().items()]
        return response

    def on_forget(self, request: ForgetDemo.Request, response: ForgetDemo.Response) -> ForgetDemo.Response:
        """Drop one demonstration."""
        try:
            task = self.library.forget(request.task, int(request.index))
            response.success, response.demonstrations_left = True, len(task.demos)
            response.reason = (f'{task.name!r} has {len(task.demos)} demonstration(s) left' if task.demos
                               else f'{task.name!r} had no demonstration left: its files are gone')
        except (TaskFileError, IndexError, OSError) as error:
            response.success, response.reason = False, str(error)
        return response

    # ------------------------------------------------------------------------------------------ asking

    def check_goal(self, goal: Manipulate.Goal) -> GoalResponse:
        """Reject a goal that names neither a text nor a task, or asks for a negative budget."""
        if not (goal.text.strip() or goal.task.strip()) or not np.isfinite(goal.time_budget_s) \
                or goal.time_budget_s < 0:
            self.node.get_logger().warning('manipulate: goal rejected (it needs a text or a task name, and a time '
                                           'budget >= 0)')
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def on_goal(self, goal_handle) -> Manipulate.Result:
        """Answer a goal: SUCCEEDED (FOUND, NO_TASK, NOT_PRESENT), ABORTED (ERROR, NO_MODEL) or CANCELED."""
        goal, request_id = goal_handle.request, next(self._ids)

        def progress(stage: str, counts) -> None:
            if goal_handle.is_cancel_requested:
                raise Cancelled(f'cancelled by the client at the {stage} stage')
            goal_handle.publish_feedback(Manipulate.Feedback(request_id=request_id, stage=stage,
                                                             count_names=list(counts),
                                                             count_values=[int(v) for v in counts.values()]))
        answer = self.answer(request_id, goal.text, goal.task, int(goal.top_k) or None, float(goal.time_budget_s),
                             progress)
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif answer.status in (ManipulationAnswer.ERROR, ManipulationAnswer.NO_MODEL):
            goal_handle.abort()
        else:
            goal_handle.succeed()
        return Manipulate.Result(answer=answer)

    def answer(self, request_id: int, text: str, task_name: str, top_k: Optional[int], budget_s: float,
               progress=None) -> ManipulationAnswer:
        """Answer one request and publish it (answer, poses, markers share one header)."""
        started = time.perf_counter()
        with self.busy:
            try:
                manipulator = self.manipulator()
                library = self.library
                # a named task is read alone: a file that does not load answers its reason, not NO_TASK
                named = task_name.strip() and library.exists(task_name)
                tasks = [library.load(task_name)] if named else library.load_all()
                result = manipulator.answer(tasks, text=text, task_name=task_name, top_k=top_k, budget_s=budget_s,
                                            progress=progress)
            except TaskFileError as error:
                result = ManipulationResult('error', str(error))
            except self.no_model as error:
                result = ManipulationResult('no_model', str(error))
                manipulator = None
            except Cancelled as error:
                result = ManipulationResult('error', str(error))
                manipulator = None
            except Exception as error:  # a request must get an answer, whatever failed inside
                result = ManipulationResult('error', f'{type(error).__name__}: {error}')
                manipulator = None
        header = conv.make_header(self.base_frame(), self.node.get_clock().now().to_msg())
        answer = answer_message(request_id, header, text, task_name, result)
        self.pub_answer.publish(answer)
        self.pub_poses.publish(PoseArray(header=header, poses=[p.pose.pose for p in answer.poses]))
        self.pub_markers.publish(gripper_markers(answer, manipulator))
        self.answered += 1
        self.last = (f'#{request_id} {result.status}: {result.reason[:200]} ({time.perf_counter() - started:.2f} s)')
        self.node.get_logger().info(f'manipulate {self.last}')
        return answer


def answer_message(request_id: int, header, text: str, task_name: str,
                   result: ManipulationResult) -> ManipulationAnswer:
    """Return a `ManipulationResult` as the ManipulationAnswer message."""
    answer = ManipulationAnswer(header=header, request_id=request_id, text=text, task_requested=task_name,
                                status=STATUS_CODES[result.status], reason=result.reason, task=result.task,
                                task_reason=result.task_reason, kind=result.kind,
                                count_names=list(result.counts), count_values=[int(v) for v in result.counts.values()],
                                timings=timing_messages(result.timings))
    answer.poses = [ManipulationPose(pose=conv.pose_stamped(c.pose, header.frame_id, header.stamp), width=c.width,
                                     score=c.score, collisions=c.collisions) for c in result.candidates]
    return answer


def gripper_markers(answer: ManipulationAnswer, manipulator: Optional[Manipulator]) -> MarkerArray:
    """DELETEALL, then the gripper's boxes at every pose of the answer (namespace ``f3rm_manipulation/<id>``)."""
    out = MarkerArray()
    out.markers.append(Marker(header=answer.header, ns='', id=0, action=Marker.DELETEALL))
    if manipulator is None:
        return out
    namespace = f'f3rm_manipulation/{answer.request_id}'
    for rank, candidate in enumerate(answer.poses):
        T = conv.pose_to_matrix(candidate.pose.pose)
        alpha = max(0.25, 0.9 - 0.15 * rank)
        boxes = manipulator.gripper.boxes(candidate.width)
        for index, (lo, hi) in enumerate(boxes):
            centre = np.eye(4)
            centre[:3, 3] = (lo + hi) / 2
            r, g, b = PALM_COLOUR if index == len(boxes) - 1 else FINGER_COLOUR
            size = hi - lo
            out.markers.append(Marker(header=answer.header, ns=namespace, id=rank * len(boxes) + index,
                                      type=Marker.CUBE, action=Marker.ADD, pose=conv.matrix_to_pose(T @ centre),
                                      scale=Vector3(x=float(size[0]), y=float(size[1]), z=float(size[2])),
                                      color=ColorRGBA(r=r, g=g, b=b, a=alpha)))
    return out
