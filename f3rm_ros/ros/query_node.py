"""query node: a text on ``~/query`` → heatmap, boxes, grasp candidates and a similarity picture.

Input: ``~/query`` (std_msgs/String, comma-separated positives; negatives and temperature are the
``query.*`` parameters, changeable at run time). The model is, in this order: the live model of a trainer
in the same process (`f3rm-ros pipeline`), the ``checkpoint`` parameter, or the newest path latched on
``trainer/checkpoint`` (reloaded when it changes). Outputs, in ``workspace.base_frame``, all reliable +
transient local (a late RViz still gets the last answer): ``~/heatmap`` (PointCloud2 x, y, z, rgb,
similarity), ``~/markers`` (MarkerArray), ``~/grasp_candidates`` (PoseArray, best first),
``~/similarity_image`` (Image of a rendered overview), and ``~/status``. Queries run on a worker thread,
newest first; the field itself is `f3rm_ros.core.query.FieldQuerier`.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseArray
from rclpy.node import Node
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from . import conversions as conv
from .common import (NodeParameters, ParamSpec, ProblemLog, expand_path, latched_qos, node_main, non_negative,
                     one_of, positive, set_torch_threads, status_message)

PARAMETERS = [
    ParamSpec('checkpoint', '', "checkpoint to query ('' = follow trainer/checkpoint, or the live trainer)",
              runtime=True),
    ParamSpec('device', 'auto', 'auto | cpu | cuda for a loaded checkpoint'),
    ParamSpec('surface_only', True, 'publish only the surface voxels of objects (fewer points)', runtime=True),
    ParamSpec('cloud_color', 'rgb', "what the cloud's rgb field holds: 'rgb' (reconstructed colour) or "
              "'relevancy' (colormap); similarity is always its own field", True, one_of('rgb', 'relevancy')),
    ParamSpec('similarity_image', True, 'render ~/similarity_image for each query', runtime=True),
    ParamSpec('image_width', 160, 'width of ~/similarity_image (px)', True, positive),
    ParamSpec('image_height', 120, 'height of ~/similarity_image (px)', True, positive),
    ParamSpec('status_rate_hz', 1.0, 'rate of ~/status (Hz)', validator=positive),
    ParamSpec('torch_threads', 0, 'torch CPU threads of this process (0 = torch default; 1 is best when node '
              'processes share a few cores)', validator=non_negative),
]
CONFIG_SECTIONS = ('query',)
RUNTIME_SECTIONS = ('query',)


class QueryNode(Node):
    """Text → 3D relevancy (see the module docstring). `live` is an `OnlineSession` of this process."""

    def __init__(self, live=None, **kwargs):
        super().__init__('query', **kwargs)
        self.params = NodeParameters(self, PARAMETERS, CONFIG_SECTIONS, RUNTIME_SECTIONS,
                                     on_change=self._on_parameter)
        set_torch_threads(self.params['torch_threads'])
        self.live = live
        self.problems = ProblemLog(self.get_logger())
        self.latest_path = ''
        self._source = None          # (model, teacher, config, lock, key) of the current model
        self.querier = None
        self._querier_key = None
        self._wake = threading.Condition()
        self._request: Optional[str] = None
        self._stop = False
        self.answered = 0
        self.last = {'query': '', 'points': 0, 'clusters': 0, 'seconds': 0.0, 'best': ''}
        out = latched_qos()
        self.pub_cloud = self.create_publisher(PointCloud2, '~/heatmap', out)
        self.pub_markers = self.create_publisher(MarkerArray, '~/markers', out)
        self.pub_grasps = self.create_publisher(PoseArray, '~/grasp_candidates', out)
        self.pub_image = self.create_publisher(Image, '~/similarity_image', out)
        self.pub_status = self.create_publisher(DiagnosticStatus, '~/status', 10)
        self.create_subscription(String, '~/query', self._on_query, 10)
        if live is None:
            self.create_subscription(String, 'trainer/checkpoint', self._on_checkpoint, latched_qos())
        self.create_timer(1.0 / self.params['status_rate_hz'], self._publish_status)
        self.worker = threading.Thread(target=self._work, name='f3rm-query', daemon=True)
        self.worker.start()

    # ------------------------------------------------------------------------------------------ inputs

    def _on_query(self, msg: String) -> None:
        text = msg.data.strip()
        if not any(part.strip() for part in text.split(',')):
            self.problems.report('query', f'empty query {msg.data!r} ignored: send e.g. "mug" or "mug, cup"')
            return
        with self._wake:
            if self._request is not None:
                self.get_logger().info(f'query {self._request!r} superseded by {text!r}')
            self._request = text
            self._wake.notify()

    def _on_checkpoint(self, msg: String) -> None:
        self.latest_path = msg.data

    def _on_parameter(self, name: str, value) -> None:
        self._querier_key = None  # rebuild with the new query settings before the next query

    # ------------------------------------------------------------------------------------------ model

    def _current_source(self):
        """(model, teacher, config, lock, key) to query, or raise RuntimeError saying why there is none."""
        from ..core.teachers import make_teacher
        from ..core.trainer import load_model
        if self.live is not None and not self.params['checkpoint']:
            trainer = self.live.trainer
            if trainer is None:
                raise RuntimeError(f'no model yet: the trainer is {self.live.state}')
            return trainer.model, self.live.teacher, trainer.config, trainer.lock, ('live', id(trainer))
        path = expand_path(self.params['checkpoint'] or self.latest_path)
        if not path:
            raise RuntimeError('no model yet: no checkpoint parameter and nothing on trainer/checkpoint')
        if not Path(path).is_file():
            raise RuntimeError(f'checkpoint {path} does not exist')
        key = ('file', path, Path(path).stat().st_mtime_ns)
        if self._source is None or self._source[4] != key:
            started = time.perf_counter()
            model, config, state = load_model(Path(path), self.params['device'])
            teacher = make_teacher(config.teacher, state=state['teacher']['state'])
            self._source = (model, teacher, config, None, key)
            self.get_logger().info(f'loaded {path} (step {state["step"]}, {state["num_frames"]} keyframes) in '
                                   f'{time.perf_counter() - started:.1f} s')
        return self._source

    def _querier(self):
        from ..core.query import FieldQuerier
        model, teacher, config, lock, key = self._current_source()
        version = self.live.model_version if key[0] == 'live' else 0
        config = dataclasses.replace(config, query=self.params.config.query)
        if self.querier is None or self._querier_key is None or self._querier_key[0] != key:
            self.querier = FieldQuerier(model, teacher, config, lock=lock, surface_only=self.params['surface_only'])
        elif self._querier_key[1] != version:
            self.querier.invalidate()
        self._querier_key = (key, version)
        return self.querier, model, lock

    # ------------------------------------------------------------------------------------------ worker

    def _work(self) -> None:
        while True:
            with self._wake:
                while self._request is None and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                text, self._request = self._request, None
            try:
                self._answer(text)
            except (RuntimeError, ValueError) as error:
                self.problems.report('query', f'query {text!r} not answered: {error}')
            except Exception as error:  # never let one query kill the worker
                self.problems.report('query', f'query {text!r} failed: {type(error).__name__}: {error}',
                                     level='error')

    def _answer(self, text: str) -> None:
        from ..core.query import default_view, similarity_view
        started = time.perf_counter()
        querier, model, lock = self._querier()
        result = querier.query(text)
        heatmap, frame = result.heatmap, result.heatmap.base_frame
        stamp = self.get_clock().now()
        colors = heatmap.rgb if self.params['cloud_color'] == 'rgb' else heatmap.colors(
            'relevancy', self.params.config.query.colormap)
        self.pub_cloud.publish(conv.make_point_cloud2(heatmap.points, colors, heatmap.relevancy, frame, stamp))
        self.pub_markers.publish(conv.markers_from_clusters(result.clusters, text, frame, stamp))
        self.pub_grasps.publish(conv.make_pose_array([c.grasp for c in result.clusters], frame, stamp))
        if self.params['similarity_image']:
            text_query, _, _ = querier.embed(text)
            view = default_view(querier.box, self.params['image_width'], self.params['image_height'])
            picture = similarity_view(model, view, text_query, box=querier.box, lock=lock,
                                      colormap=self.params.config.query.colormap)
            pixels = (np.clip(picture, 0, 1) * 255 + 0.5).astype(np.uint8)
            self.pub_image.publish(conv.rgb_to_image(pixels, stamp, 'f3rm_overview_optical_frame'))
        seconds = time.perf_counter() - started
        best = result.clusters[0] if result.clusters else None
        self.answered += 1
        self.last = {'query': text, 'points': len(heatmap), 'clusters': len(result.clusters),
                     'seconds': round(seconds, 3),
                     'best': '' if best is None else ' '.join(f'{v:.3f}' for v in best.centroid)}
        self.get_logger().info(f'query {text!r}: {len(heatmap)} points, {len(result.clusters)} clusters'
                               + (f', best at {self.last["best"]} (score {best.score:.2f})' if best else '')
                               + f' in {seconds:.2f} s')

    def _publish_status(self) -> None:
        values = {'answered': self.answered, 'busy': self._request is not None,
                  'model': 'live' if self.live is not None and not self.params['checkpoint'] else
                  (self.params['checkpoint'] or self.latest_path or 'none'),
                  'problems': sum(self.problems.counts.values()), 'last_problem': self.problems.last_problem}
        values.update({f'last_{k}': v for k, v in self.last.items()})
        self.pub_status.publish(status_message(self.get_fully_qualified_name(), values,
                                               DiagnosticStatus.OK, f'{self.answered} queries answered'))

    def destroy_node(self):
        """Stop the worker thread."""
        with self._wake:
            self._stop = True
            self._wake.notify()
        self.worker.join(60.0)  # a query in progress finishes first
        return super().destroy_node()


def main(args=None) -> int:
    """``ros2 run f3rm_ros query_node``."""
    return node_main(QueryNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
