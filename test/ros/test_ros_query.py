"""The query node as a planner meets it: the Query service and the topics, decoded from the wire.

The model is an analytic field (test/analytic_field.py) handed to the node as a live session, so every yaw of
an elongated object is a new, exactly known scene: the grasps' closing axes are checked against the object's
narrow axis from the decoded PoseArray and service response, not from the matrices they were made from.
"""
import threading

import numpy as np
import pytest
from f3rm_ros_interfaces.msg import QueryAnswer
from f3rm_ros_interfaces.srv import Query
from geometry_msgs.msg import PoseArray
from rclpy.parameter import Parameter
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from f3rm_ros.core.capture.frames import FrameStore
from f3rm_ros.ros import conversions as conv
from f3rm_ros.ros.qos import latched_qos
from f3rm_ros.harness.testing import RosProbe

from analytic_field import analytic_scene, yaw_matrix
from repo_root import ROOT

pytestmark = pytest.mark.ros

BAR_SIZE = (0.12, 0.03, 0.04)      # long along its own x, narrow along y
BAR_CENTRE = (0.5, 0.0, 0.02)


class LiveSession:
    """Stand in for `OnlineSession`.

    The query node reads `trainer` (model, config, lock, step_count, num_frames), `teacher`, `model_version`,
    `target_steps` and `state`.
    """

    def __init__(self):
        self.trainer = None
        self.teacher = None
        self.model_version = 0
        self.target_steps = 100
        self.state = 'waiting for keyframes'

    def show(self, model, config, teacher):
        """Replace the model, as a trainer reset would."""
        self.trainer = type('Trainer', (), {'model': model, 'config': config, 'lock': threading.Lock(),
                                            'store': FrameStore(4),   # no keyframes: no ghost check
                                            'step_count': 100, 'num_frames': 12})()
        self.teacher = teacher
        self.model_version += 1


@pytest.fixture(scope='module')
def rig():
    """Start a query node serving a `LiveSession`, and the probe's subscribers on its outputs."""
    from f3rm_ros.ros.query_node import QueryNode
    probe = RosProbe()
    live = LiveSession()
    node = QueryNode(live=live, context=probe.context, parameter_overrides=[
        Parameter('similarity_image', value=False), Parameter('status_rate_hz', value=20.0),
        Parameter('preset', value='cpu-tiny')])
    probe.add_node(node)
    inboxes = {name: probe.subscribe(kind, f'/query/{name}', latched_qos(10)) for name, kind in (
        ('answer', QueryAnswer), ('heatmap', PointCloud2), ('markers', MarkerArray),
        ('grasp_candidates', PoseArray))}
    yield probe, live, node, inboxes
    probe.executor.remove_node(node)
    node.destroy_node()
    probe.close()


def reorder(scene):
    """(config, teacher, model) → (model, config, teacher), the order `LiveSession.show` takes."""
    config, teacher, model = scene
    return model, config, teacher


def ask(probe, positives, **fields):
    """Call ~/locate and return the decoded QueryAnswer."""
    return probe.call(Query, '/query/locate', Query.Request(positives=positives, **fields), timeout=60).answer


def closing_axis(pose):
    """Decode the gripper's closing axis (y) of a geometry_msgs/Pose with scipy."""
    q = pose.orientation
    return Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()[:, 1]


def approach_axis(pose):
    q = pose.orientation
    return Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()[:, 2]


def test_before_any_model_the_answer_is_no_model(rig):
    probe, live, node, inboxes = rig
    answer = ask(probe, ['mug'])
    assert answer.status == QueryAnswer.NO_MODEL and 'no model yet' in answer.reason
    assert answer.heatmap.width == 0 and not answer.clusters and not answer.grasps


@pytest.mark.parametrize('yaw', list(range(0, 181, 15)))
def test_grasps_close_across_the_narrow_side_at_every_yaw(rig, yaw):
    """Close top-down grasps along a bar's narrow axis whatever its yaw, in the response and on the topic.

    A 12 x 3 x 4 cm bar yawed 0°..180°: the response's grasps and ~/grasp_candidates (same poses, same header)
    close along its narrow axis, and the cluster box's x axis follows its long side.
    """
    probe, live, node, inboxes = rig
    config, teacher, model = analytic_scene(spheres={}, boxes={'bar': (BAR_CENTRE, BAR_SIZE, float(yaw))})
    live.show(model, config, teacher)
    since = len(inboxes['grasp_candidates'].messages)
    answer = ask(probe, ['bar'])
    assert answer.status == QueryAnswer.FOUND, answer.reason
    assert answer.header.frame_id == 'base_link' and len(answer.clusters) == 1
    narrow, long_side = yaw_matrix(yaw)[:, 1], yaw_matrix(yaw)[:, 0]
    box = answer.clusters[0]
    q = box.pose.orientation
    box_x = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()[:, 0]
    assert abs(box_x @ long_side) > np.cos(np.radians(5)), f'box x axis {box_x} vs the bar {long_side}'
    centre = np.array([box.pose.position.x, box.pose.position.y, box.pose.position.z])
    assert np.linalg.norm(centre[:2] - np.array(BAR_CENTRE[:2])) < 0.01
    top = [g for g in answer.grasps if g.approach == g.APPROACH_TOP]
    assert top, answer.reason
    best = top[0]
    assert np.allclose(approach_axis(best.pose.pose), [0, 0, -1], atol=1e-9)
    angle = np.degrees(np.arccos(min(1.0, abs(closing_axis(best.pose.pose) @ narrow))))
    assert angle < 5.0, f'yaw {yaw}: the best grasp closes {angle:.1f}° off the narrow axis'
    assert best.width == pytest.approx(0.03 + 0.01, abs=0.011) and best.cluster_index == 0
    poses = inboxes['grasp_candidates'].wait(lambda m: m.header.stamp == answer.header.stamp, 10,
                                             'the PoseArray of this answer', since=since)
    assert len(poses.poses) == len(answer.grasps)
    for pose, grasp in zip(poses.poses, answer.grasps):
        assert pose == grasp.pose.pose and grasp.pose.header == answer.header
    first = poses.poses[0]
    assert abs(closing_axis(first) @ narrow) > np.cos(np.radians(5))


def test_an_absent_object_is_not_present_and_every_output_is_empty(rig):
    """Answer NOT_PRESENT for an absent object, with empty outputs.

    'apple' is in the teacher's vocabulary but not in the scene: NOT_PRESENT, an empty heatmap, no grasps,
    markers cleared, on every output of that request id.
    """
    probe, live, node, inboxes = rig
    config, teacher, model = analytic_scene(spheres={}, boxes={'bar': (BAR_CENTRE, BAR_SIZE, 0.0)})
    live.show(model, config, teacher)
    assert ask(probe, ['bar']).status == QueryAnswer.FOUND
    answer = ask(probe, ['apple'])
    assert answer.status == QueryAnswer.NOT_PRESENT, answer.reason
    assert answer.heatmap.width == 0 and not answer.clusters and not answer.grasps
    stamp = answer.header.stamp
    cloud = inboxes['heatmap'].wait(lambda m: m.header.stamp == stamp, 10, 'the empty heatmap')
    assert cloud.width == 0
    assert len(inboxes['grasp_candidates'].wait(lambda m: m.header.stamp == stamp, 10, 'poses').poses) == 0
    markers = inboxes['markers'].wait(lambda m: m.markers and m.markers[0].header.stamp == stamp, 10, 'markers')
    assert [m.action for m in markers.markers] == [markers.markers[0].DELETEALL]


def test_the_string_topic_answers_with_a_request_id_on_every_output(rig):
    """Answer the String topic with a request id on every output.

    `ros2 topic pub /query/query std_msgs/String "data: bar"`: ~/answer says which request it answers; the
    markers carry the id in their namespace and label, and share the answer's header.
    """
    probe, live, node, inboxes = rig
    config, teacher, model = analytic_scene(spheres={}, boxes={'bar': (BAR_CENTRE, BAR_SIZE, 30.0)})
    live.show(model, config, teacher)
    publisher = probe.publisher(String, '/query/query')
    probe.wait_for_subscribers(publisher)
    since = len(inboxes['answer'].messages)
    publisher.publish(String(data='bar'))
    answer = inboxes['answer'].wait(lambda m: m.text == 'bar', 30, 'the topic answer', since=since)
    assert answer.status == QueryAnswer.FOUND and answer.request_id > 0
    markers = inboxes['markers'].wait(lambda m: m.markers and m.markers[0].header.stamp == answer.header.stamp,
                                      10, 'markers of the answer')
    cubes = [m for m in markers.markers if m.type == m.CUBE]
    labels = [m for m in markers.markers if m.type == m.TEXT_VIEW_FACING]
    assert len(cubes) == 1 and cubes[0].ns == f'f3rm/{answer.request_id}'
    assert labels[0].text.startswith(f'#{answer.request_id} bar')
    xyz, _, relevancy = conv.point_cloud2_to_arrays(
        inboxes['heatmap'].wait(lambda m: m.header.stamp == answer.header.stamp, 10, 'heatmap'))
    assert len(xyz) == answer.heatmap.width > 0 and relevancy.max() > 0.9


@pytest.mark.parametrize('positives, fields, words', [
    ([], {}, 'empty'),
    (['', '  '], {}, 'empty'),
    (['x' * 10000], {}, 'too long'),
    (['mu\x1bg'], {}, 'control characters'),    # (a NUL never arrives: the middleware cuts the string there)
    (['bar'], {'threshold_mode': 'median'}, 'threshold mode'),
    (['bar'], {'threshold_mode': 'percentile', 'threshold_value': 150.0}, '0..100'),
    (['bar'], {'threshold_mode': 'value', 'threshold_value': float('nan')}, '-1..1'),
    (['bar'], {'negatives': ['ok', 'bad\x07']}, 'control characters'),
])
def test_bad_requests_get_an_error_with_a_reason_and_the_node_keeps_serving(rig, positives, fields, words):
    probe, live, node, inboxes = rig
    config, teacher, model = analytic_scene(spheres={}, boxes={'bar': (BAR_CENTRE, BAR_SIZE, 0.0)})
    live.show(model, config, teacher)
    answer = ask(probe, positives, **fields)
    assert answer.status == QueryAnswer.ERROR and words in answer.reason, answer.reason
    assert answer.heatmap.width == 0 and not answer.grasps
    assert ask(probe, ['bar']).status == QueryAnswer.FOUND


def test_request_fields_reach_the_query(rig):
    """Unicode positives, unknown negatives, a fixed threshold and a cluster limit are honoured."""
    probe, live, node, inboxes = rig
    boxes = {'bar': (BAR_CENTRE, BAR_SIZE, 0.0), 'block': ((0.5, 0.2, 0.02), (0.04, 0.04, 0.04), 0.0)}
    config, teacher, model = analytic_scene(spheres={}, boxes=boxes)
    live.show(model, config, teacher)
    both = ask(probe, ['bar', 'block'], negatives=['table', 'никто'], threshold_mode='value', threshold_value=0.7)
    assert both.status == QueryAnswer.FOUND and list(both.negatives) == ['table', 'никто']
    assert both.threshold == pytest.approx(0.7) and len(both.clusters) == 2
    wide = {'block': ((0.5, 0.0, 0.025), (0.12, 0.10, 0.05), 0.0)}       # wider than the 8 cm gripper
    live.show(*reorder(analytic_scene(spheres={}, boxes=wide)))
    no_grasp = ask(probe, ['block'])
    assert no_grasp.status == QueryAnswer.FOUND and not no_grasp.grasps
    assert 'no grasp for cluster 0' in no_grasp.reason and 'gripper opens 8.0 cm' in no_grasp.reason
    live.show(model, config, teacher)
    one = ask(probe, ['bar', 'block'], max_clusters=1)
    assert len(one.clusters) == 1 and {g.cluster_index for g in one.grasps} == {0}
    unicode = ask(probe, ['杯子'])
    assert unicode.status in (QueryAnswer.NOT_PRESENT, QueryAnswer.FOUND) and unicode.positives == ['杯子']
    stages = {t.stage for t in both.timings}
    assert {'text', 'relevancy', 'threshold', 'cluster', 'grasps', 'pack', 'total'} <= stages


class SlowModel:
    """Wraps an analytic model so that each density chunk takes `delay_s`: a cold query lasts a while."""

    def __init__(self, model, delay_s):
        self.model, self.delay_s = model, delay_s

    def __getattr__(self, name):
        return getattr(self.model, name)

    def density_at(self, positions):
        import time
        time.sleep(self.delay_s)
        return self.model.density_at(positions)


def bottom(cluster):
    """Lowest point of a decoded QueryCluster's gravity-aligned box (its z axis is base z)."""
    return cluster.pose.position.z - cluster.extent.z / 2


def test_no_cluster_forms_inside_a_thin_table_or_floats_above_it(rig):
    """Answer only what rests on the 2 cm table: nothing inside it, nothing hanging in the air.

    A 'bar' exists only inside the table slab (relevant voxels below its top face, like the second "bowl" cluster
    1.5 cm under the table): NOT_PRESENT. A 'block' reaches 1.5 cm into the table: its box reaches no further than
    `SUPPORT_FUZZ_VOXELS` below the table top (a trained field's surfaces read that high).
    A blob with the ball's features floats 10 cm above the table: the 'ball' answer has the ball alone.
    """
    from analytic_field import TABLE_TOP
    from f3rm_ros.core.query.answer import SUPPORT_FUZZ_VOXELS
    allowance = SUPPORT_FUZZ_VOXELS * 0.01 + 1e-6                                   # cpu-tiny's 1 cm voxels
    probe, live, node, inboxes = rig
    config, teacher, model = analytic_scene(
        spheres={'ball': (np.array([0.62, 0.12, 0.05]), 0.05)},
        boxes={'bar': ((0.40, -0.10, -0.008), (0.10, 0.10, 0.016), 0.0),
               'block': ((0.45, 0.15, 0.0175), (0.05, 0.05, 0.065), 0.0)})
    model.add_speck(np.array([0.35, 0.05, 0.15]), 0.025)
    live.show(model, config, teacher)
    assert probe.set_parameters('/query', surface_only=False)[0].successful   # the buried voxels in the heatmap too
    try:
        buried = ask(probe, ['bar'])
        assert buried.status == QueryAnswer.NOT_PRESENT and not buried.clusters, buried.reason
        block = ask(probe, ['block'])
        assert block.status == QueryAnswer.FOUND and block.clusters, block.reason
        assert all(bottom(c) >= TABLE_TOP - allowance for c in block.clusters), [bottom(c) for c in block.clusters]
        ball = ask(probe, ['ball'])
        assert ball.status == QueryAnswer.FOUND and len(ball.clusters) == 1, ball.reason
        centre = ball.clusters[0].pose.position
        assert np.linalg.norm([centre.x - 0.62, centre.y - 0.12, centre.z - 0.05]) < 0.01
        # alone, a floating group is still answered (an object's underside may not have formed yet), and says so
        model.spheres.clear()
        live.show(model, config, teacher)
        alone = ask(probe, ['ball'])
        assert alone.status == QueryAnswer.FOUND and len(alone.clusters) == 1, alone.reason
        assert alone.clusters[0].note.startswith('floating: 1'), alone.clusters[0].note          # 12 cm up
        assert 'is floating' in alone.reason
    finally:
        assert probe.set_parameters('/query', surface_only=True)[0].successful


def test_grasps_follow_the_clusters_order_and_never_cede_the_first_grasp(rig):
    """grasps[0] belongs to cluster 0 whenever cluster 0 has a grasp; without one the list is empty.

    'ball, bar' answers two clusters, the 10 cm ball first (more evidence). With a 14 cm gripper both have grasps:
    every grasp of cluster 0 comes before any of cluster 1. With a 6 cm gripper the ball has none (10 cm across in
    every direction) while the 3 cm bar still has: the answer withholds the bar's grasps and says why.
    """
    probe, live, node, inboxes = rig
    config, teacher, model = analytic_scene(spheres={'ball': (np.array([0.62, 0.12, 0.05]), 0.05)},
                                            boxes={'bar': (BAR_CENTRE, BAR_SIZE, 0.0)})
    live.show(model, config, teacher)
    assert probe.set_parameters('/query', **{'grasp.max_opening': 0.14})[0].successful
    both = ask(probe, ['ball', 'bar'])
    assert both.status == QueryAnswer.FOUND and len(both.clusters) == 2, both.reason
    assert both.clusters[0].pose.position.z == pytest.approx(0.05, abs=0.01)      # the ball ranks first
    indices = [g.cluster_index for g in both.grasps]
    assert 0 in indices and 1 in indices, both.reason
    assert both.grasps[0].cluster_index == 0 and indices == sorted(indices)
    assert both.clusters[1].note.startswith(('minor:', 'separate:')) and both.clusters[0].note == ''
    try:
        assert probe.set_parameters('/query', **{'grasp.max_opening': 0.06})[0].successful
        withheld = ask(probe, ['ball', 'bar'])
        assert withheld.status == QueryAnswer.FOUND and len(withheld.clusters) == 2, withheld.reason
        assert withheld.grasps == [], [g.cluster_index for g in withheld.grasps]
        assert 'no grasp for cluster 0' in withheld.reason and 'withheld' in withheld.reason
        alone = ask(probe, ['bar'])            # asked alone, the bar is cluster 0 and keeps its grasps
        assert alone.grasps and all(g.cluster_index == 0 for g in alone.grasps), alone.reason
    finally:
        assert probe.set_parameters('/query', **{'grasp.max_opening': 0.14})[0].successful


def test_answers_carry_the_maturity_of_their_model(rig):
    """Every answer says the live model's step and keyframes; settled follows what the trainer's ~/maturity says."""
    from f3rm_ros_interfaces.msg import ModelMaturity
    probe, live, node, inboxes = rig
    config, teacher, model = analytic_scene(spheres={}, boxes={'bar': (BAR_CENTRE, BAR_SIZE, 0.0)})
    live.show(model, config, teacher)
    first = ask(probe, ['bar'])
    assert (first.maturity.step, first.maturity.keyframes) == (100, 12) and not first.maturity.settled
    assert first.maturity.checkpoint == ''                                          # the live model
    trainer = probe.publisher(ModelMaturity, '/maturity', latched_qos())      # the rig's node has no remaps
    probe.wait_for_subscribers(trainer)
    trainer.publish(ModelMaturity(step=100, target_steps=100, keyframes=12, since_last_keyframe_s=3.0,
                                  settled=True, settled_since_step=60, trainer_state='done', field_change=0.004))
    RosProbe.wait_until(lambda: ask(probe, ['bar']).maturity.settled, 10, 'a settled answer')
    settled = ask(probe, ['bar']).maturity
    assert settled.settled_since_step == 60 and settled.trainer_state == live.state   # live: the session's own
    assert settled.since_last_keyframe_s >= 3.0 and settled.field_change == pytest.approx(0.004)
    trainer.publish(ModelMaturity(step=101, keyframes=13, since_last_keyframe_s=0.0, settled=False,
                                  trainer_state='training'))                     # a new keyframe came
    RosProbe.wait_until(lambda: not ask(probe, ['bar']).maturity.settled, 10, 'unsettled by a new keyframe')


@pytest.mark.parametrize('fields, words', [
    (dict(positives=[' ']), 'empty'),
    (dict(positives=['bar'], negatives=['Bar']), 'both a positive and a negative'),
    (dict(positives=['bar'], threshold_mode='value', threshold_value=1.5), '-1..1'),
    (dict(positives=['bar'], threshold_mode='median'), "'otsu', 'percentile' or 'value'"),
])
def test_a_bad_action_goal_is_aborted_with_the_reason_the_service_gives(rig, fields, words):
    """A bad Locate goal ends ABORTED (not SUCCEEDED) with the same ERROR reason as the same service request."""
    from action_msgs.msg import GoalStatus
    from f3rm_ros_interfaces.action import Locate
    from rclpy.action import ActionClient
    probe, live, node, inboxes = rig
    config, teacher, model = analytic_scene(spheres={}, boxes={'bar': (BAR_CENTRE, BAR_SIZE, 0.0)})
    live.show(model, config, teacher)
    service = probe.call(Query, '/query/locate', Query.Request(**fields), timeout=60).answer
    assert service.status == QueryAnswer.ERROR and words in service.reason, service.reason
    client = ActionClient(probe.node, Locate, '/query/locate')
    try:
        assert client.wait_for_server(timeout_sec=20)
        result = wait_future(wait_future(client.send_goal_async(Locate.Goal(**fields))).get_result_async())
        assert result.status == GoalStatus.STATUS_ABORTED
        assert result.result.answer.status == QueryAnswer.ERROR and result.result.answer.reason == service.reason
    finally:
        client.destroy()


def test_parameter_descriptions_say_range_and_meaning(rig):
    """``ros2 param describe`` (DescribeParameters, decoded) gives each query parameter's meaning, not a pointer.

    Every config parameter used to read "see core/config.py", and query.present_relevancy's -1 was undocumented.
    """
    from rcl_interfaces.srv import DescribeParameters
    probe, live, node, inboxes = rig
    names = ['query.present_relevancy', 'query.threshold_value', 'query.voxel_size', 'grasp.max_opening',
             'similarity_image']
    described = probe.call(DescribeParameters, '/query/describe_parameters', DescribeParameters.Request(names=names))
    text = {d.name: d.description for d in described.descriptors}
    assert set(text) == set(names) and not any('see core/config.py' in t for t in text.values()), text
    assert "negative = the teacher's own bound" in text['query.present_relevancy']
    assert '-1..1' in text['query.threshold_value'] and '(m' in text['query.voxel_size']
    assert '(m)' in text['grasp.max_opening'] and 'dropped when a newer question' in text['similarity_image']


def test_the_locate_action_reports_stages_and_can_be_cancelled():
    """Report each stage of the Locate action and stop when cancelled.

    Feedback names each stage of a cold query and the result is the service's answer; a cancel sent during the
    (slow) field stage ends the goal CANCELED with an ERROR answer saying so.
    """
    from action_msgs.msg import GoalStatus
    from f3rm_ros_interfaces.action import Locate
    from rclpy.action import ActionClient
    from rclpy.executors import MultiThreadedExecutor

    from f3rm_ros.ros.query_node import QueryNode
    probe = RosProbe()
    live = LiveSession()
    node = QueryNode(live=live, context=probe.context, parameter_overrides=[
        Parameter('similarity_image', value=False), Parameter('preset', value='cpu-tiny'),
        Parameter('query.chunk_size', value=20000)])
    executor = MultiThreadedExecutor(num_threads=3, context=probe.context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    client = ActionClient(probe.node, Locate, '/query/locate')
    try:
        assert client.wait_for_server(timeout_sec=20)
        config, teacher, model = analytic_scene(spheres={}, boxes={'bar': (BAR_CENTRE, BAR_SIZE, 0.0)})
        live.show(model, config, teacher)
        stages = []
        goal = client.send_goal_async(Locate.Goal(positives=['bar']),
                                      feedback_callback=lambda f: stages.append(f.feedback.stage))
        result = wait_future(wait_future(goal).get_result_async())
        assert result.status == GoalStatus.STATUS_SUCCEEDED
        assert result.result.answer.status == QueryAnswer.FOUND and result.result.answer.grasps
        assert stages == ['text', 'field', 'relevancy', 'threshold', 'cluster', 'grasps']

        live.show(SlowModel(model, 0.5), config, teacher)      # 6 chunks of 0.5 s: 3 s in the field stage
        stages.clear()
        goal = wait_future(client.send_goal_async(Locate.Goal(positives=['bar']),
                                                  feedback_callback=lambda f: stages.append(f.feedback.stage)))
        RosProbe.wait_until(lambda: 'field' in stages, 20, 'the field stage')
        wait_future(goal.cancel_goal_async())
        result = wait_future(goal.get_result_async())
        assert result.status == GoalStatus.STATUS_CANCELED
        answer = result.result.answer
        assert answer.status == QueryAnswer.ERROR and 'cancelled' in answer.reason and not answer.grasps
        assert 'cluster' not in stages
    finally:
        client.destroy()
        executor.shutdown()
        node.destroy_node()
        probe.close()


def wait_future(future, timeout=60.0):
    """Block until an rclpy future is done (the probe's executor completes it) and return its result."""
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    assert done.wait(timeout), 'timed out waiting for the action server'
    return future.result()


def test_the_readme_planner_client_runs_against_the_node(rig):
    """The rclpy client in docs/query.md ("Asking from a planner"), run as written in another process, answers."""
    import re
    import subprocess
    import sys

    from f3rm_ros.harness.testing import subprocess_env
    probe, live, node, inboxes = rig
    config, teacher, model = analytic_scene(spheres={}, boxes={'bar': (BAR_CENTRE, BAR_SIZE, 0.0)})
    live.show(model, config, teacher)
    doc = (ROOT / 'docs' / 'query.md').read_text()
    section = doc[doc.index('## Asking from a planner'):]
    code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
    done = subprocess.run([sys.executable, '-c', code], env=subprocess_env(probe.domain_id), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    # the scene has a bar, no mug: the client prints the status (NOT_PRESENT = 1) and the reason
    assert done.stdout.startswith(f'{QueryAnswer.NOT_PRESENT} '), done.stdout
