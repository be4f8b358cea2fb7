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
remap it to a trainer's ``~/checkpoint``, as the launch files do). A path announced on that topic is accepted
only inside ``checkpoint_dir`` or ``checkpoint_dirs_allowed``; every checkpoint is loaded tensors-only
(``weights_only=True``, nothing in it ever runs), and one distilled from random-weight CLIP only with
``allow_random_teacher: true``. A refused checkpoint is an ERROR on ``/diagnostics`` and in the answers.

Outputs of every answer, one header (``workspace.base_frame``, one stamp), reliable + transient local (a late
RViz still gets the last answer): ``~/answer`` (QueryAnswer, the service's response too), ``~/heatmap``
(PointCloud2 x, y, z, rgb, similarity; empty unless found), ``~/markers`` (MarkerArray, namespace
``f3rm/<request id>``), ``~/grasp_candidates`` (PoseArray, best first; empty unless found), then
``~/similarity_image`` (Image of a rendered overview); the status on ``/diagnostics``. The field work is
`f3rm_ros.core.query.answer.FieldQuerier`; the messages are made in `answers`.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
from f3rm_ros_interfaces.action import Locate
from f3rm_ros_interfaces.msg import QueryAnswer
from f3rm_ros_interfaces.srv import Query
from geometry_msgs.msg import PoseArray
from rclpy.action import ActionServer, CancelResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from ..core.query.relevancy import positive_phrases
from ..core.teachers import text_is_random
from . import answers
from . import conversions as conv
from .common import expand_path, node_main, set_torch_threads
from .diagnostics import NodeDiagnostics, ProblemLog, host_name
from .logs import route_core_logging, unroute_core_logging
from .params import NodeParameters, non_negative, one_of, ParamSpec, positive
from .qos import latched_qos

PARAMETERS = [
    ParamSpec('checkpoint', '', "checkpoint to query ('' = follow the checkpoint topic, or the live trainer)",
              runtime=True),
    ParamSpec('checkpoint_dir', '', 'the trainer\'s checkpoint folder: paths announced on the checkpoint topic are '
              'accepted only inside it (or checkpoint_dirs_allowed)'),
    ParamSpec('checkpoint_dirs_allowed', [], 'further folders whose checkpoints the checkpoint topic may announce'),
    ParamSpec('allow_random_teacher', False, 'query a checkpoint distilled from random-weight CLIP (not semantic)'),
    ParamSpec('device', 'auto', 'auto | cpu | cuda for a loaded checkpoint'),
    ParamSpec('surface_only', True, 'publish only the surface voxels of objects (fewer points)', runtime=True),
    ParamSpec('cloud_color', 'rgb', "what the cloud's rgb field holds: 'rgb' (reconstructed colour) or "
              "'relevancy' (colormap); the relevancy is always its own field", True, one_of('rgb', 'relevancy')),
    ParamSpec('similarity_image', True, 'render ~/similarity_image after each answer', runtime=True),
    ParamSpec('image_width', 160, 'width of ~/similarity_image (px)', True, positive),
    ParamSpec('image_height', 120, 'height of ~/similarity_image (px)', True, positive),
    ParamSpec('status_rate_hz', 1.0, 'rate of the status on /diagnostics (Hz)', validator=positive),
    ParamSpec('hardware_id', '', "hardware_id of the status on /diagnostics ('' = host/device)"),
    ParamSpec('torch_threads', 0, 'torch CPU threads of this process (0 = torch default; 1 is best when node '
              'processes share a few cores)', validator=non_negative),
]
CONFIG_SECTIONS = ('query', 'grasp')
RUNTIME_SECTIONS = ('query', 'grasp')
PROBLEM_WINDOW_S = 10.0   # how long a failed answer keeps the status at WARN (s)
STOP_WAIT_S = 2.0         # how long a shutting-down node waits for a query in progress (s)


class NoModel(RuntimeError):
    """There is no model to query yet (no checkpoint, no live trainer)."""


class Cancelled(Exception):
    """An action goal's cancel request arrived: the query stops before its next stage."""


class QueryNode(Node):
    """Text → 3D answer (see the module docstring). `live` is an `OnlineSession` of this process."""

    def __init__(self, live=None, **kwargs):
        super().__init__('query', **kwargs)
        self.params = NodeParameters(self, PARAMETERS, CONFIG_SECTIONS, RUNTIME_SECTIONS,
                                     on_change=self._on_parameter, check=self._check_parameters)
        route_core_logging(self, ('f3rm_ros.core.query', 'f3rm_ros.core.study.views',
                                  'f3rm_ros.core.training.render'))
        set_torch_threads(self.params['torch_threads'])
        self.live = live
        self.problems = ProblemLog(self.get_logger())
        self.latest_path = ''
        self.model_problem = ''      # why the model to query was refused or could not be loaded ('' = fine)
        self._refused_key = None     # the checkpoint file (path, mtime) that failed to load: not retried
        self._source = None          # (model, teacher, config, lock, key) of the current model
        self.querier = None
        self._querier_key = None
        self._ids = itertools.count(1)
        self._id_lock = threading.Lock()
        self._query_lock = threading.Lock()   # one question at a time on the querier and the publishers
        self._wake = threading.Condition()
        self._request: Optional[tuple] = None    # (request id, text) of the newest waiting topic question
        self._picture: Optional[tuple] = None    # (header, query) of the newest answer to draw
        self._preload = False                     # a checkpoint was announced: load (and judge) it now
        self._stop = False
        self.answered = 0
        self.last = {'id': 0, 'query': '', 'status': '', 'reason': '', 'points': 0, 'clusters': 0, 'grasps': 0,
                     'seconds': 0.0, 'best': ''}
        out = latched_qos()
        self.pub_answer = self.create_publisher(QueryAnswer, '~/answer', out)
        self.pub_cloud = self.create_publisher(PointCloud2, '~/heatmap', out)
        self.pub_markers = self.create_publisher(MarkerArray, '~/markers', out)
        self.pub_grasps = self.create_publisher(PoseArray, '~/grasp_candidates', out)
        self.pub_image = self.create_publisher(Image, '~/similarity_image', out)
        self.create_subscription(String, '~/query', self.on_query, 10)
        # its own group: a service call in progress does not hold up the topic, status or checkpoint callbacks
        self.create_service(Query, '~/locate', self._on_locate, callback_group=MutuallyExclusiveCallbackGroup())
        # reentrant: a cancel request is served while the goal it cancels runs
        self.action_server = ActionServer(self, Locate, '~/locate', execute_callback=self._on_locate_goal,
                                          cancel_callback=lambda _: CancelResponse.ACCEPT,
                                          callback_group=ReentrantCallbackGroup())
        if live is None:
            self.create_subscription(String, 'checkpoint', self._on_checkpoint, latched_qos())
        self.diagnostics = NodeDiagnostics(self, self.params['status_rate_hz'], self._health, self._hardware_id)
        self.worker = threading.Thread(target=self._work, name='f3rm-query', daemon=True)
        self.worker.start()

    # ------------------------------------------------------------------------------------------ inputs

    def _next_id(self) -> int:
        with self._id_lock:
            return next(self._ids)

    def on_query(self, msg: String) -> None:
        """Queue a text query (the ~/query topic's callback; `pipeline` calls it directly)."""
        request = (self._next_id(), msg.data)
        with self._wake:
            superseded, self._request = self._request, request
            self._wake.notify()
        if superseded is not None:
            self.get_logger().info(f'query #{superseded[0]} {superseded[1]!r} superseded by #{request[0]}')
            self._publish(self._answer_without_query(superseded[0], superseded[1], 'error',
                                                     f'superseded by a newer query (#{request[0]}) before it ran'))

    def _on_locate(self, request: Query.Request, response: Query.Response) -> Query.Response:
        text = ', '.join(request.positives)
        response.answer = self.answer(self._next_id(), text, list(request.positives), list(request.negatives) or None,
                                      request.threshold_mode, float(request.threshold_value),
                                      int(request.max_clusters) or None)
        return response

    def _on_locate_goal(self, goal_handle) -> Locate.Result:
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
        else:
            goal_handle.succeed()
        return Locate.Result(answer=answer)

    def _on_checkpoint(self, msg: String) -> None:
        problem = self._unallowed(msg.data)
        if problem:
            self.model_problem = f'checkpoint {msg.data!r} announced on the checkpoint topic refused: {problem}'
            self.problems.report('checkpoint', self.model_problem, level='error')
            return
        self.latest_path = msg.data
        self.model_problem, self._refused_key = '', None  # a new announcement: judged by the load below
        with self._wake:   # loaded now, not at the next question: a bad file is reported before anyone asks
            self._preload = True
            self._wake.notify()

    def _unallowed(self, path: str) -> str:
        """Why a path announced on the checkpoint topic is not accepted ('' = it is)."""
        folders = [self.params['checkpoint_dir']] + [str(f) for f in self.params['checkpoint_dirs_allowed']]
        folders = [os.path.realpath(expand_path(folder)) for folder in folders if folder]
        if not folders:
            return ('no checkpoint_dir is set, so no announced path is accepted (set checkpoint_dir to the '
                    "trainer's, or list folders in checkpoint_dirs_allowed)")
        real = os.path.realpath(expand_path(path)) if path else ''
        if real and any(os.path.commonpath([real, folder]) == folder for folder in folders):
            return ''
        return f'it is not inside checkpoint_dir or checkpoint_dirs_allowed ({", ".join(folders)})'

    def _check_parameters(self, values, config) -> str:
        """Refuse a query.voxel_size that would make too many voxels over the loaded model's workspace."""
        from ..core.geometry import WorkspaceBox
        from ..core.query.voxels import MAX_VOXELS
        if config is None:
            return ''
        if self.live is not None and not values.get('checkpoint'):
            trainer = getattr(self.live, 'trainer', None)
            model_config = trainer.config if trainer is not None else getattr(self.live, 'config', None)
            if model_config is None:
                return ''
            workspace = model_config.workspace
        elif self._source is not None:
            workspace = self._source[2].workspace
        else:
            return ''  # no model yet: the first query checks it against the model's workspace
        box = WorkspaceBox.from_config(workspace)
        size = config.query.voxel_size
        count = float(np.prod(np.maximum(1, np.round((box.max_xyz - box.min_xyz) / size))))
        if count > MAX_VOXELS:
            return (f'query.voxel_size {size} m makes {int(count):,} voxels over the model\'s '
                    f'{np.round(box.max_xyz - box.min_xyz, 3).tolist()} m workspace (at most {MAX_VOXELS:,})')
        return ''

    def _on_parameter(self, name: str, value) -> None:
        self._querier_key = None  # rebuild with the new query settings before the next query

    # ------------------------------------------------------------------------------------------ model

    def _current_source(self):
        """(model, teacher, config, lock, key) to query, or raise RuntimeError saying why there is none."""
        from ..core.teachers import RANDOM_HINT, make_teacher
        from ..core.training.trainer import CheckpointError, load_model
        if self.live is not None and not self.params['checkpoint']:
            trainer = self.live.trainer
            if trainer is None:
                raise NoModel(f'no model yet: the trainer is {self.live.state}')
            return trainer.model, self.live.teacher, trainer.config, trainer.lock, ('live', id(trainer))
        path = expand_path(self.params['checkpoint'] or self.latest_path)
        if not path:
            raise NoModel('no model yet: no checkpoint parameter and nothing on trainer/checkpoint')
        if not Path(path).is_file():
            raise NoModel(f'checkpoint {path} does not exist')
        key = ('file', path, Path(path).stat().st_mtime_ns)
        if self._source is not None and key == self._refused_key:
            return self._source  # a refused checkpoint does not take the last good model away
        if self._source is None or self._source[4] != key:
            started = time.perf_counter()
            try:
                model, config, state = load_model(Path(path), self.params['device'])
                teacher = make_teacher(config.teacher, state=state['teacher']['state'])
            except (CheckpointError, RuntimeError, FileNotFoundError, ValueError) as error:
                self._refused_key = key
                self.model_problem = f'checkpoint {path} not loaded: {error}'
                if self._source is not None:
                    self.model_problem += f'; answering from the last good one ({self._source[4][1]})'
                self.problems.report('checkpoint', self.model_problem, level='error')
                if self._source is not None:
                    return self._source
                raise NoModel(self.model_problem) from error
            if text_is_random(teacher) and not self.params['allow_random_teacher']:  # only the text head answers
                self.model_problem = (f'checkpoint {path} was distilled from RANDOM-WEIGHT CLIP: its answers mean '
                                      f'nothing; refused. To fix: {RANDOM_HINT}')
                self.problems.report('checkpoint', self.model_problem, level='error')
                raise NoModel(self.model_problem)
            self.model_problem = ''
            self._source = (model, teacher, config, None, key)
            self.get_logger().info(f'loaded {path} (step {state["step"]}, {state["num_frames"]} keyframes) in '
                                   f'{time.perf_counter() - started:.1f} s')
        return self._source

    def _querier(self):
        from ..core.query.answer import FieldQuerier
        model, teacher, config, lock, key = self._current_source()
        version = self.live.model_version if key[0] == 'live' else 0
        config = dataclasses.replace(config, query=self.params.config.query, grasp=self.params.config.grasp)
        if self.querier is None or self._querier_key is None or self._querier_key[0] != key:
            self.querier = FieldQuerier(model, teacher, config, lock=lock, surface_only=self.params['surface_only'])
        elif self._querier_key[1] != version:
            self.querier.invalidate()
        self._querier_key = (key, version)
        return self.querier, model, lock

    # ------------------------------------------------------------------------------------------ answers

    def answer(self, request_id: int, text: str, positives, negatives=None, threshold_mode: str = '',
               threshold_value: Optional[float] = None, max_clusters: Optional[int] = None,
               progress=None) -> QueryAnswer:
        """Answer one question, publish every output with one header, and return the ``QueryAnswer``.

        `threshold_mode` '' uses the ``query.threshold`` parameter (and `threshold_value` is ignored);
        `progress(stage)` is called before each stage (see `FieldQuerier.query`).
        """
        started = time.perf_counter()
        with self._query_lock:
            result, status = None, 'error'
            try:
                positive_phrases(positives)          # bad text is an error whether or not a model exists
                querier, _, _ = self._querier()
                value = threshold_value if threshold_mode else None
                result = querier.query(positives, negatives, threshold_mode or None, value, max_clusters,
                                       progress=progress)
                status, reason = result.status, result.reason
            except NoModel as error:
                status, reason = 'no_model', str(error)
            except ValueError as error:
                reason = f'bad request: {error}'
            except Cancelled as error:
                reason = str(error)
            except Exception as error:  # never let one question stop the node
                reason = f'{type(error).__name__}: {error}'
                self.problems.report('query', f'query #{request_id} {text!r} failed: {reason}', level='error')
            if status in ('error', 'no_model'):
                self.problems.report('query', f'query #{request_id} {text!r}: {reason}')
            header = conv.make_header(self._frame(), self.get_clock().now())
            mark = time.perf_counter()
            colors = None
            if result is not None:
                heatmap = result.heatmap
                colors = heatmap.rgb if self.params['cloud_color'] == 'rgb' else heatmap.colors(
                    'relevancy', self.params.config.query.colormap)
            timings = dict(result.timings) if result is not None else {}
            answer = answers.answer_message(request_id, header, text, status, reason, result, colors, timings)
            timings['pack'] = time.perf_counter() - mark
            timings['total'] = time.perf_counter() - started
            answer.timings = answers.timing_messages(timings)
            self._publish(answer, result.clusters if result is not None and status == 'found' else [])
            self._remember(answer, timings['total'])
        if status == 'found' and self.params['similarity_image']:
            with self._wake:
                self._picture = (header, result.positives, result.negatives)
                self._wake.notify()
        return answer

    def _answer_without_query(self, request_id: int, text: str, status: str, reason: str) -> QueryAnswer:
        header = conv.make_header(self._frame(), self.get_clock().now())
        return answers.answer_message(request_id, header, text, status, reason)

    def _frame(self) -> str:
        return self.params.config.workspace.base_frame if self._source is None else self._source[2].workspace.base_frame

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
                     'seconds': round(seconds, 3),
                     'best': '' if best is None else f'{best.x:.3f} {best.y:.3f} {best.z:.3f}'}
        self.get_logger().info(f'query #{answer.request_id} {answer.text!r}: {status}: {answer.reason} '
                               f'({len(answer.grasps)} grasps, {seconds:.2f} s)')

    # ------------------------------------------------------------------------------------------ worker

    def _work(self) -> None:
        while True:
            with self._wake:
                while self._request is None and self._picture is None and not self._preload and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                request, self._request = self._request, None
                picture = None
                if request is None:
                    picture, self._picture = self._picture, None
                    if picture is None:
                        self._preload = False   # taken: loaded below
            if request is not None:
                request_id, text = request
                self.answer(request_id, text, text)
            elif picture is not None:
                self._draw(*picture)
            else:
                self._load_announced()

    def _load_announced(self) -> None:
        """Load the newest announced checkpoint (a refusal is reported on /diagnostics by the load)."""
        with self._query_lock:
            try:
                self._current_source()
            except NoModel:
                pass   # reported by the load; the next question says it too
            except Exception as error:  # the worker must outlive any file
                self.problems.report('checkpoint', f'announced checkpoint not loaded: {type(error).__name__}: '
                                     f'{error}', level='error')

    def _draw(self, header, positives, negatives) -> None:
        """Render the overview picture of an answer (after it went out: pictures never delay an answer)."""
        from ..core.study.views import default_view, similarity_view
        try:
            with self._query_lock:
                querier, model, lock = self._querier()
                text_query, _, _ = querier.embed(positives, negatives)
                view = default_view(querier.box, self.params['image_width'], self.params['image_height'])
                picture = similarity_view(model, view, text_query, box=querier.box, lock=lock,
                                          colormap=self.params.config.query.colormap)
            pixels = (np.clip(picture, 0, 1) * 255 + 0.5).astype(np.uint8)
            self.pub_image.publish(conv.rgb_to_image(pixels, header.stamp, 'f3rm_overview_optical_frame'))
        except Exception as error:  # a picture is a nicety: report, keep serving
            if self._stop:  # shutting down: the publisher is gone, nobody is waiting for the picture
                return
            self.problems.report('picture', f'similarity image not drawn: {type(error).__name__}: {error}')

    def _health(self):
        """(level, message, values) of the status on /diagnostics (`NodeDiagnostics`)."""
        source = self._source
        values = {'answered': self.answered, 'busy': self._query_lock.locked(),
                  'waiting': int(self._request is not None), 'pictures_waiting': int(self._picture is not None),
                  'model': 'live' if self.live is not None and not self.params['checkpoint'] else
                  (self.params['checkpoint'] or self.latest_path or 'none'),
                  'teacher': source[1].name if source is not None else '',
                  # every feature head of the model; text is answered from the first
                  'heads': ', '.join(f'{n} {d}' for n, d in source[1].heads) if source is not None else '',
                  'model_problem': self.model_problem,
                  'problems': sum(self.problems.counts.values()), 'last_problem': self.problems.last_problem}
        values.update({f'last_{k}': v for k, v in self.last.items()})
        level, why = ('error', self.model_problem) if self.model_problem else self.problems.recent(PROBLEM_WINDOW_S)
        teacher = source[1] if source is not None else getattr(self.live, 'teacher', None)
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
        # A query or picture in progress may finish within STOP_WAIT_S; after that the worker (a daemon) is left
        # behind: ros2 launch sends SIGTERM 5 s after SIGINT, and its answer could not go out anyway.
        self.worker.join(STOP_WAIT_S)
        unroute_core_logging(self)
        return super().destroy_node()


def main(args=None) -> int:
    """``ros2 run f3rm_ros query_node``."""
    return node_main(QueryNode, args, threads=3)  # the service's, the action's and the other callbacks side by side


if __name__ == '__main__':
    raise SystemExit(main())
