"""A query's answer as messages: ``f3rm_ros_interfaces/QueryAnswer`` and what the query node publishes beside it.

Every message of one answer carries the same header (base frame, one stamp), and the markers the request id in
their namespace (``f3rm/<id>``) and labels (``#<id> mug 0.93``), so a subscriber knows which question each
answers. An answer that is not FOUND has no clusters, grasps or heatmap points: topic subscribers receive empty
messages instead of an earlier question's answer.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
from f3rm_ros_interfaces.msg import GraspCandidate, QueryAnswer, QueryCluster, StageTiming
from geometry_msgs.msg import Vector3
from std_msgs.msg import Header

from . import conversions as conv

STATUS_CODES = {'found': QueryAnswer.FOUND, 'not_present': QueryAnswer.NOT_PRESENT,
                'no_model': QueryAnswer.NO_MODEL, 'error': QueryAnswer.ERROR}
STATUS_NAMES = {code: name for name, code in STATUS_CODES.items()}
APPROACH_CODES = {'top': GraspCandidate.APPROACH_TOP, 'side': GraspCandidate.APPROACH_SIDE,
                  'tilted': GraspCandidate.APPROACH_TILTED, 'rim': GraspCandidate.APPROACH_RIM}


def marker_namespace(request_id: int) -> str:
    """Markers of answer `request_id` live in this namespace."""
    return f'f3rm/{request_id}'


def cluster_message(cluster, name: str, note: str = '') -> QueryCluster:
    """Convert a core `Cluster` to a ``QueryCluster`` (box pose from its centroid and rotation; `note`: see the msg)."""
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = cluster.rotation, cluster.centroid
    e = cluster.extent
    return QueryCluster(name=name, pose=conv.matrix_to_pose(pose),
                        extent=Vector3(x=float(e[0]), y=float(e[1]), z=float(e[2])),
                        relevancy=float(cluster.relevancy), max_relevancy=float(cluster.max_relevancy),
                        evidence=float(cluster.evidence), num_points=int(cluster.num_points), note=note)


def grasp_message(grasp, header: Header) -> GraspCandidate:
    """Convert a core `Grasp` to a ``GraspCandidate`` with a PoseStamped in the answer's frame."""
    return GraspCandidate(pose=conv.pose_stamped(grasp.pose, header.frame_id, header.stamp), width=float(grasp.width),
                          score=float(grasp.score), cluster_index=int(grasp.cluster_index),
                          approach=APPROACH_CODES[grasp.approach])


def answer_message(request_id: int, header: Header, text: str, status: str, reason: str, result=None,
                   cloud_colors: Optional[np.ndarray] = None,
                   timings: Optional[Dict[str, float]] = None) -> QueryAnswer:
    """Build the ``QueryAnswer`` of a request.

    `result` is the core `QueryResult` (None when no query ran: no model, bad input); its heatmap goes into
    the answer only when `status` is 'found', with `cloud_colors` [N, 3] uint8 in the cloud's rgb field.
    `timings` (seconds per stage) default to the result's.
    """
    answer = QueryAnswer(header=header, request_id=int(request_id), text=text, status=STATUS_CODES[status],
                         reason=reason)
    answer.heatmap = conv.make_point_cloud2(np.zeros((0, 3), np.float32), None, None, header.frame_id, header.stamp)
    if result is not None:
        answer.positives, answer.negatives = list(result.positives), list(result.negatives)
        answer.threshold = float(result.threshold)
        if status == 'found':
            notes = list(getattr(result, 'notes', [])) or [''] * len(result.clusters)
            missing = [f'no grasp for cluster {i}: {why}' for i, why in enumerate(result.grasp_reasons) if why]
            if getattr(result, 'withheld', 0):
                missing.append(f'cluster 0, the best answer, has no feasible grasp, so the {result.withheld} '
                               "grasps of other clusters are withheld (grasps[0] is never another object's)")
            doubts = [f'cluster {i} is {note}' for i, note in enumerate(notes) if note]
            answer.reason = '; '.join([reason] + missing + doubts)
            name = ', '.join(result.positives)
            answer.clusters = [cluster_message(c, name, note) for c, note in zip(result.clusters, notes)]
            answer.grasps = [grasp_message(g, header) for g in result.grasps]
            heatmap = result.heatmap
            answer.heatmap = conv.make_point_cloud2(heatmap.points, cloud_colors, heatmap.relevancy,
                                                    header.frame_id, header.stamp,
                                                    normals=getattr(heatmap, 'normals', None))
        timings = result.timings if timings is None else timings
    answer.timings = timing_messages(timings or {})
    return answer


def timing_messages(timings: Dict[str, float]) -> list:
    """Return {stage: seconds} as ``StageTiming`` messages."""
    return [StageTiming(stage=str(k), seconds=float(v)) for k, v in timings.items()]


def answer_markers(answer: QueryAnswer, clusters: Sequence) -> 'conv.MarkerArray':
    """Return the answer's clusters as markers (``conv.markers_from_clusters``) labelled ``#<id> <text>``."""
    return conv.markers_from_clusters(clusters, f'#{answer.request_id} {answer.text}', answer.header.frame_id,
                                      answer.header.stamp, namespace=marker_namespace(answer.request_id))


def answer_poses(answer: QueryAnswer) -> 'conv.PoseArray':
    """Return the answer's grasp poses as a PoseArray (best first; empty unless found)."""
    return conv.PoseArray(header=answer.header, poses=[g.pose.pose for g in answer.grasps])
