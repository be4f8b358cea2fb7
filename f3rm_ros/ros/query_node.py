"""query node: text → an answer for a planner (found / not present), heatmap, boxes, grasps, a picture.

Inputs: the service ``~/locate`` (``f3rm_ros_interfaces/srv/Query``: positives, negatives, threshold, maximum
clusters → a ``QueryAnswer``), the action ``~/locate`` (``f3rm_ros_interfaces/action/Locate``: the same
question with feedback per stage and cancel, for cold queries that take seconds on a CPU), and ``~/query``
(std_msgs/String, comma-separated positives, for ``ros2 topic pub``; negatives, temperature and the threshold
are the ``query.*`` parameters, changeable at run time and refused with the reason when they would break an
answer). Every
question gets a request id; topic questions are answered newest first, and one replaced while it waited is
answered ERROR "superseded". The model is, in this order: the live model of a trainer in the same process
(`f3rm-ros pipeline`), the ``checkpoint`` parameter, or the newest path latched on ``checkpoint`` (relative:
remap it to a trainer's ``~/checkpoint``, as the launch files do); which one and what is accepted is
`model_source.ModelSource`'s. Every checkpoint is loaded tensors-only (``weights_only=True``, nothing in it ever
runs), and one distilled from random-weight CLIP only with ``allow_random_teacher: true``. A refused checkpoint is
an ERROR on ``/diagnostics`` and in the answers.

Outputs of every answer, one header (``workspace.base_frame``, one stamp), reliable + transient local (a late
RViz still gets the last answer): ``~/answer`` (QueryAnswer, the service's response too), ``~/heatmap``
(PointCloud2 x, y, z, rgb, similarity; empty unless found), ``~/markers`` (MarkerArray, namespace
``f3rm/<request id>``), ``~/grasp_candidates`` (PoseArray, in the clusters' order; empty unless found); the
status on ``/diagnostics``.
Pictures never delay an answer: ``~/similarity_image`` (Image of a rendered overview) is drawn after the answer
went out, by a worker of its own from a snapshot of the answer (`query_pictures.PictureWorker`), once questions
pause, and dropped when a newer question arrives before it is done. Every answer carries the
maturity of its model (``QueryAnswer.maturity``: step, keyframes, the last keyframe's age, checkpoint,
``settled``), learnt from the trainer's ``~/maturity`` (remap ``maturity`` to it, as the launch files do) and from
the checkpoint loaded. The field work is
`f3rm_ros.core.query.answer.FieldQuerier`; the messages are made in `answers`. Teaching and asking by
demonstration (``~/record_demo``, ``~/list_tasks``, ``~/forget_demo``, the action ``~/manipulate``) are
`manipulation.ManipulationServer`'s, on this node's model.
"""
from __future__ import annotations

import itertools
import threading
import time
from typing import Optional

from f3rm_ros_interfaces.action import Locate
from f3rm_ros_interfaces.msg import ModelMaturity, QueryAnswer, SceneChange
from f3rm_ros_interfaces.srv import Query
from geometry_msgs.msg import PoseArray
from rclpy.action import ActionServer, CancelResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from ..core.query.answer import check_request
from ..core.query.picture import PictureJob
from ..core.teachers import text_is_random
from . import answers
from . import conversions as conv
from . import manipulation
from .common import node_main, set_torch_threads
from .diagnostics import NodeDiagnostics, ProblemLog, host_name
from .logs import route_core_logging, shorten, unroute_core_logging
from .model_source import ModelSource, NoModel
from .params import NodeParameters, non_negative, one_of, ParamSpec, positive
from .qos import latched_qos
from .query_pictures import PictureWorker

PARAMETERS = [
    ParamSpec('checkpoint', '', "checkpoint to query ('' = follow the checkpoint topic, or the live trainer)",
              runtime=True),
    ParamSpec('checkpoint_dir', '', 'the trainer\'s checkpoint folder: paths announced on the checkpoint topic are '
              'accepted only inside it (or checkpoint_dirs_allowed)'),
    ParamSpec('checkpoint_dirs_allowed', [], 'further folders whose checkpoints the checkpoint topic may announce'),
    ParamSpec('allow_random_teacher', False, 'query a checkpoint distilled from random-weight CLIP (not semantic)'),
    ParamSpec('device', 'auto', 'auto | cpu | cuda: where a loaded checkpoint is evaluated (a live model stays '
              'where its trainer has it)'),
    ParamSpec('surface_only', True, 'true: the heatmap holds only the surface voxels of objects (fewer points); '
              'grasps are checked against the solid occupancy either way', runtime=True),
    ParamSpec('cloud_color', 'rgb', "what the cloud's rgb field holds: 'rgb' (reconstructed colour) or "
              "'relevancy' (colormap); the relevancy is always its own field", True, one_of('rgb', 'relevancy')),
    ParamSpec('similarity_image', True, 'draw ~/similarity_image after each FOUND answer (in its own worker, '
              'after the answer went out; dropped when a newer question arrives first)', runtime=True),
    ParamSpec('image_width', 160, 'width of ~/similarity_image (px, >= 1; the render costs width x height rays)',
              True, positive),
    ParamSpec('image_height', 120, 'height of ~/similarity_image (px, >= 1)', True, positive),
    ParamSpec('status_rate_hz', 1.0, 'rate of the status on /diagnostics (Hz)', validator=positive),
    ParamSpec('hardware_id', '', "hardware_id of the status on /diagnostics ('' = host/device)"),
    ParamSpec('torch_threads', 0, 'torch CPU threads of this process (0 = torch default; 1 is best when node '
              'processes share a few cores)', validator=non_negative),
] + manipulation.PARAMETERS
CONFIG_SECTIONS = ('query', 'grasp', 'manipulation')
RUNTIME_SECTIONS = ('query', 'grasp', 'manipulation')
PROBLEM_WINDOW_S = 10.0   # how long a failed answer keeps the status at WARN (s)
STOP_WAIT_S = 2.0         # how long a shutting-down node waits for a query in progress (s)
LOG_TEXT_CHARS = 120      # a question's text in the log is cut to this many characters (the answer keeps it whole)


class Cancelled(Exception):
    """An action goal's cancel request arrived: the query stops before its next stage."""


class QueryNode(Node):
    """Text → 3D answer (see the module docstring). `live` is an `OnlineSession` of this process."""

    def __init__(self, live=None, tf_buffer=None, **kwargs):
        super().__init__('query', **kwargs)
        self.params = NodeParameters(self, PARAMETERS, CONFIG_SECTIONS, RUNTIME_SECTIONS,
                                     on_change=self._on_parameter, check=self._check_parameters)
        route_core_logging(self, ('f3rm_ros.core.query', 'f3rm_ros.core.study.views',
                                  'f3rm_ros.core.training.render'))
        set_torch_threads(self.params['torch_threads'])
        self.problems = ProblemLog(self.get_logger())
        self.models = ModelSource(self.params, live, self.problems, self.get_logger())
        self._ids = itertools.count(1)
        self._id_lock = threading.Lock()
        self._query_lock = threading.Lock()   # one question at a time on the querier and the publishers
        self._wake = threading.Condition()
        self._request: Optional[tuple] = None    # (request id, text) of the newest waiting topic question
        self._preload = False                     # a checkpoint was announced: load (and judge) it now
        self._stop = False
        self._trainer_maturity: Optional[tuple] = None   # (ModelMaturity from the trainer, monotonic time heard)
        self.answered = 0
        self.last = {'id': 0, 'query': '', 'status': '', 'reason': '', 'points': 0, 'clusters': 0, 'grasps': 0,
                     'seconds': 0.0, 'best': ''}
        out = latched_qos()
        self.pub_answer = self.create_publisher(QueryAnswer, '~/answer', out)
        self.pub_cloud = self.create_publisher(PointCloud2, '~/heatmap', out)
        self.pub_markers = self.create_publisher(MarkerArray, '~/markers', out)
        self.pub_grasps = self.create_publisher(PoseArray, '~/grasp_candidates', out)
        self.pictures = PictureWorker(self.create_publisher(Image, '~/similarity_image', out), self.problems)
        self.create_subscription(String, '~/query', self.on_query, 10)
        # its own group: a service call in progress does not hold up the topic, status or checkpoint callbacks
        self.create_service(Query, '~/locate', self._on_locate, callback_group=MutuallyExclusiveCallbackGroup())
        # reentrant: a cancel request is served while the goal it cancels runs
        self.action_server = ActionServer(self, Locate, '~/locate', execute_callback=self._on_locate_goal,
                                          cancel_callback=lambda _: CancelResponse.ACCEPT,
                                          callback_group=ReentrantCallbackGroup())
        # teaching and asking by demonstration share this node's model and its one-question lock
        self.manipulation = manipulation.ManipulationServer(self, self.models.querier_for_question, NoModel,
                                                            self._query_lock, self.models.base_frame, tf_buffer)
        if live is None:
            self.create_subscription(String, 'checkpoint', self._on_checkpoint, latched_qos())
        self.create_subscription(ModelMaturity, 'maturity', self._on_maturity, latched_qos())
        # the trainer's ~/scene_changes: cached voxels of the region are stale (the whole cache is evaluated anew)
        self.scene_changes, self.last_scene_change = 0, ''
        self.create_subscription(SceneChange, 'scene_changes', self._on_scene_change, latched_qos(depth=10))
        self.diagnostics = NodeDiagnostics(self, self.params['status_rate_hz'], self._health, self._hardware_id,
                                           problems=self.problems)
        self.worker = threading.Thread(target=self._work, name='f3rm-query', daemon=True)
        self.worker.start()

    # ------------------------------------------------------------------------------------------ inputs

    def _next_id(self) -> int:
        with self._id_lock:
            request_id = next(self._ids)
            self.pictures.asked(request_id)
            return request_id

    def on_query(self, msg: String) -> None:
        """Queue a text query (the ~/query topic's callback; `pipeline` calls it directly)."""
        request = (self._next_id(), msg.data)
        with self._wake:
            superseded, self._request = self._request, request
            self._wake.notify()
        if superseded is not None:
            self.get_logger().info(f'query #{superseded[0]} {shorten(superseded[1], LOG_TEXT_CHARS)!r} '
                                   f'superseded by #{request[0]}')
            self._publish(self._answer_without_query(superseded[0], superseded[1], 'error',
                                                     f'superseded by a newer query (#{request[0]}) before it ran'))

    def _on_locate(self, request: Query.Request, response: Query.Response) -> Query.Response:
        text = ', '.join(request.positives)
        response.answer = self.answer(self._next_id(), text, list(request.positives), list(request.negatives) or None,
                                      request.threshold_mode, float(request.threshold_value),
                                      int(request.max_clusters) or None)
        return response

    def _on_locate_goal(self, goal_handle) -> Locate.Result:
        """Answer a goal: SUCCEEDED with FOUND / NOT_PRESENT, ABORTED with ERROR or NO_MODEL, else CANCELED.

        A bad goal is ABORTED with the reason the service gives the same request; CANCELED after a cancel request.
        """
        goal, request_id = goal_handle.request, self._next_id()

        def progress(stage: str) -> None:
            if goal_handle.is_cancel_requested:
                raise Cancelled(f'cancelled by the client before the {stage} stage')
            goal_handle.publish_feedback(Locate.Feedback(request_id=request_id, stage=stage))
        answer = self.answer(request_id, ', '.join(goal.positives), list(goal.positives), list(goal.negatives) or None,
                             goal.threshold_mode, float(goal.threshold_value), int(goal.max_clusters) or None,
                             progress)
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif answer.status in (QueryAnswer.ERROR, QueryAnswer.NO_MODEL):
            goal_handle.abort()
        else:
            goal_handle.succeed()
        return Locate.Result(answer=answer)

    def _on_scene_change(self, msg: SceneChange) -> None:
        self.scene_changes += 1
        self.last_scene_change = (f'{conv.stamp_to_seconds(msg.header.stamp):.3f} s: '
                                  f'[{msg.min.x:.3f}, {msg.min.y:.3f}, {msg.min.z:.3f}]..'
                                  f'[{msg.max.x:.3f}, {msg.max.y:.3f}, {msg.max.z:.3f}] m: {msg.reason}')
        self.models.scene_changed()

    def _on_maturity(self, msg: ModelMaturity) -> None:
        self._trainer_maturity = (msg, time.monotonic())

    def _on_checkpoint(self, msg: String) -> None:
        if self.models.announce(msg.data):
            with self._wake:   # loaded now, not at the next question: a bad file is reported before anyone asks
                self._preload = True
                self._wake.notify()

    def _check_parameters(self, values, config) -> str:
        return self.models.voxel_size_problem(values, config)

    def _on_parameter(self, name: str, value) -> None:
        self.models.settings_changed()  # rebuild with the new query settings before the next query

    # ------------------------------------------------------------------------------------------ answers

    def answer(self, request_id: int, text: str, positives, negatives=None, threshold_mode: str = '',
               threshold_value: Optional[float] = None, max_clusters: Optional[int] = None,
               progress=None) -> QueryAnswer:
        """Answer one question, publish every output with one header, and return the ``QueryAnswer``.

        `threshold_mode` '' uses the ``query.threshold`` parameter (and `threshold_value` is ignored);
        `progress(stage)` is called before each stage (see `FieldQuerier.query`).
        """
        started = time.perf_counter()
        picture = None
        with self._query_lock:
            result, status, maturity = None, 'error', ModelMaturity(since_last_keyframe_s=-1.0, field_change=-1.0)
            logged = shorten(text, LOG_TEXT_CHARS)
            try:
                value = threshold_value if threshold_mode else None
                # a bad request is an error whether or not a model exists, with the same reason on every path
                check_request(positives, negatives, threshold_mode or None, value, self.params.config.query)
                querier, model, lock = self.models.querier_for_question()
                maturity = self.models.maturity(self._trainer_maturity)
                result = querier.query(positives, negatives, threshold_mode or None, value, max_clusters,
                                       progress=progress)
                status, reason = result.status, result.reason
                if status == 'found' and self.params['similarity_image']:
                    picture = self._picture_job(querier, model, lock, result, request_id)
            except NoModel as error:
                status, reason = 'no_model', str(error)
                self.problems.report('query', f'query #{request_id} {logged!r}: {reason}')
            except ValueError as error:   # the client's mistake, not the node's: logged, not a problem
                reason = f'bad request: {error}'
                self.get_logger().info(f'query #{request_id} {logged!r}: {shorten(reason, 2 * LOG_TEXT_CHARS)}')
            except Cancelled as error:
                reason = str(error)
            except Exception as error:  # never let one question stop the node
                reason = f'{type(error).__name__}: {error}'
                self.problems.report('query', f'query #{request_id} {logged!r} failed: {reason}', level='error')
            header = conv.make_header(self.models.base_frame(), self.get_clock().now())
            mark = time.perf_counter()
            colors = None
            if result is not None:
                heatmap = result.heatmap
                colors = heatmap.rgb if self.params['cloud_color'] == 'rgb' else heatmap.colors(
                    'relevancy', self.params.config.query.colormap)
            timings = dict(result.timings) if result is not None else {}
            answer = answers.answer_message(request_id, header, text, status, reason, result, colors, timings)
            answer.maturity = maturity
            timings['pack'] = time.perf_counter() - mark
            timings['total'] = time.perf_counter() - started
            answer.timings = answers.timing_messages(timings)
            self._publish(answer, result.clusters if result is not None and status == 'found' else [])
            self._remember(answer, timings['total'])
        if picture is not None:   # drawn after the answer went out, by the picture worker
            picture.stamp = header.stamp
            self.pictures.offer(picture)
        return answer

    def _picture_job(self, querier, model, lock, result, request_id: int):
        """Return the snapshot the picture worker draws an answer's overview from (`picture.PictureJob`)."""
        text_query, _, _ = querier.embed(result.positives, result.negatives)   # cached by the query just made
        return PictureJob(stamp=None, query=text_query, model=model, box=querier.box, lock=lock,
                          width=self.params['image_width'], height=self.params['image_height'],
                          colormap=self.params.config.query.colormap, generation=request_id)

    def model_info(self) -> dict:
        """{'path', 'step'} of the model answering now (path 'live' for a trainer in this process)."""
        maturity = self.models.maturity(self._trainer_maturity)
        return {'path': maturity.checkpoint or 'live', 'step': int(maturity.step)}

    def _answer_without_query(self, request_id: int, text: str, status: str, reason: str) -> QueryAnswer:
        header = conv.make_header(self.models.base_frame(), self.get_clock().now())
        return answers.answer_message(request_id, header, text, status, reason)

    def _publish(self, answer: QueryAnswer, clusters=()) -> None:
        """Publish the answer and its heatmap, markers and grasp poses (all one header)."""
        self.pub_answer.publish(answer)
        self.pub_cloud.publish(answer.heatmap)
        self.pub_markers.publish(answers.answer_markers(answer, clusters))
        self.pub_grasps.publish(answers.answer_poses(answer))

    def _remember(self, answer: QueryAnswer, seconds: float) -> None:
        status = answers.STATUS_NAMES[answer.status]
        best = answer.clusters[0].pose.position if answer.clusters else None
        self.answered += 1
        self.last = {'id': answer.request_id, 'query': answer.text, 'status': status, 'reason': answer.reason,
                     'points': answer.heatmap.width, 'clusters': len(answer.clusters), 'grasps': len(answer.grasps),
                     'seconds': round(seconds, 3), 'settled': answer.maturity.settled,
                     'best': '' if best is None else f'{best.x:.3f} {best.y:.3f} {best.z:.3f}'}
        self.last['query'] = shorten(answer.text, LOG_TEXT_CHARS)
        self.last['reason'] = shorten(answer.reason, 4 * LOG_TEXT_CHARS)
        self.get_logger().info(f'query #{answer.request_id} {self.last["query"]!r}: {status}: '
                               f'{shorten(answer.reason, 4 * LOG_TEXT_CHARS)} ({len(answer.grasps)} grasps, '
                               f'step {answer.maturity.step}{", settled" if answer.maturity.settled else ""}, '
                               f'{seconds:.3f} s)')

    # ------------------------------------------------------------------------------------------ worker

    def _work(self) -> None:
        while True:
            with self._wake:
                while self._request is None and not self._preload and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                request, self._request = self._request, None
                if request is None:
                    self._preload = False   # taken: loaded below
            if request is not None:
                request_id, text = request
                self.answer(request_id, text, text)
            else:
                self._load_announced()

    def _load_announced(self) -> None:
        """Load the newest announced checkpoint (a refusal is reported on /diagnostics by the load)."""
        with self._query_lock:
            try:
                self.models.current()
            except NoModel:
                pass   # reported by the load; the next question says it too
            except Exception as error:  # the worker must outlive any file
                self.problems.report('checkpoint', f'announced checkpoint not loaded: {type(error).__name__}: '
                                     f'{error}', level='error')

    def _health(self):
        """(level, message, values) of the status on /diagnostics (`NodeDiagnostics`)."""
        values = {'answered': self.answered, 'busy': self._query_lock.locked(),
                  'waiting': int(self._request is not None), 'pictures_waiting': int(self.pictures.pending),
                  'pictures_drawn': self.pictures.drawn, 'pictures_dropped': self.pictures.dropped,
                  **self.models.status_values(), 'scene_changes': self.scene_changes,
                  'last_scene_change': self.last_scene_change,
                  'problems': sum(self.problems.counts.values()), 'last_problem': self.problems.last_problem}
        values.update({f'last_{k}': v for k, v in self.last.items()})
        problem = self.models.problem
        level, why = ('error', problem) if problem else self.problems.recent(PROBLEM_WINDOW_S)
        teacher = self.models.teacher
        if level == 'ok' and teacher is not None and text_is_random(teacher):
            level, why = 'warn', 'the model was distilled from RANDOM-WEIGHT CLIP: its answers are not semantic'
        return level, f'{self.answered} queries answered' + (f'; {why}' if why else ''), values

    def _hardware_id(self) -> str:
        return self.params['hardware_id'] or f'{host_name()}/{self.params["device"]}'

    def destroy_node(self):
        """Stop the worker thread."""
        with self._wake:
            self._stop = True
            self._wake.notify()
        self.pictures.close()
        # A query in progress may finish within STOP_WAIT_S (a picture stops at its next band); after that the
        # workers (daemons) are left behind: ros2 launch sends SIGTERM 5 s after SIGINT, and no answer could go out.
        self.worker.join(STOP_WAIT_S)
        self.pictures.thread.join(STOP_WAIT_S)
        unroute_core_logging(self)
        return super().destroy_node()


def main(args=None) -> int:
    """``ros2 run f3rm_ros query_node``."""
    return node_main(QueryNode, args, threads=3)  # the service's, the action's and the other callbacks side by side


if __name__ == '__main__':
    raise SystemExit(main())
