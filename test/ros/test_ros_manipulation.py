"""Teaching and asking by demonstration over ROS 2, as a robot's executive would: decoded from the wire.

A query node serves a stand-in live session whose model is the analytic "tool" table of test_manipulation (a
block with a bar for a handle). Two demonstrations are recorded through ``~/record_demo``: one from TF (a fake
tf2 buffer of the same API, ``base_link`` <- ``gripper`` at the request stamp) and one from a PoseStamped. The
tool is then moved and turned half a turn, and the ``~/manipulate`` action must return the bar grasp there;
feedback, cancel, rejected and refused goals are checked from what the client receives.
"""
import threading

import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from f3rm_ros_interfaces.action import Manipulate
from f3rm_ros_interfaces.msg import ManipulationAnswer
from f3rm_ros_interfaces.srv import ForgetDemo, ListTasks, RecordDemo
from geometry_msgs.msg import PoseArray
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from scipy.spatial.transform import Rotation
from visualization_msgs.msg import MarkerArray

from f3rm_ros.harness.testing import RosProbe
from f3rm_ros.ros import conversions as conv
from f3rm_ros.ros.qos import latched_qos

from test_manipulation import FLIP, GRASP_IN_TOOL, tool_scene
from test_ros_query import LiveSession, wait_future
from f3rm_ros.core.scenes.truth import pose_error

pytestmark = pytest.mark.ros

SMALL_SEARCH = [Parameter('manipulation.max_seed_voxels', value=64),
                Parameter('manipulation.rotations_per_voxel', value=48),
                Parameter('manipulation.steps', value=40), Parameter('manipulation.start_candidates', value=256),
                Parameter('query.voxel_size', value=0.005), Parameter('query.cluster_min_points', value=4)]


class FakeTfBuffer:
    """tf2_ros.Buffer's ``lookup_transform(target, source, time, timeout)`` over one stored transform."""

    def __init__(self):
        self.pose = None
        self.asked = []

    def lookup_transform(self, target, source, time, timeout):
        self.asked.append((target, source, time.nanoseconds))
        if self.pose is None or (target, source) != ('base_link', 'gripper'):
            raise LookupError(f'"{source}" passed to lookupTransform argument source_frame does not exist')
        return type('TransformStamped', (), {'transform': conv.matrix_to_transform(self.pose)})()


def matrix(pose_msg):
    """4 x 4 of a decoded geometry_msgs/Pose."""
    p, q = pose_msg.position, pose_msg.orientation
    out = np.eye(4)
    out[:3, :3] = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
    out[:3, 3] = (p.x, p.y, p.z)
    return out


@pytest.fixture(scope='module')
def rig(tmp_path_factory):
    """Start a query node (three executor threads: a cancel is served while a goal runs), a probe, an action client."""
    from f3rm_ros.ros.query_node import QueryNode
    probe = RosProbe()
    live, tf = LiveSession(), FakeTfBuffer()
    tasks_dir = tmp_path_factory.mktemp('tasks')
    node = QueryNode(live=live, tf_buffer=tf, context=probe.context, parameter_overrides=[
        Parameter('similarity_image', value=False), Parameter('preset', value='cpu-tiny'),
        Parameter('tasks_dir', value=str(tasks_dir)), Parameter('grasp_frame', value='gripper'), *SMALL_SEARCH])
    executor = MultiThreadedExecutor(num_threads=3, context=probe.context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    client = ActionClient(probe.node, Manipulate, '/query/manipulate')
    assert client.wait_for_server(timeout_sec=20)
    inboxes = {'answer': probe.subscribe(ManipulationAnswer, '/query/manipulation/answer', latched_qos(10)),
               'poses': probe.subscribe(PoseArray, '/query/manipulation/poses', latched_qos(10)),
               'markers': probe.subscribe(MarkerArray, '/query/manipulation/markers', latched_qos(10))}
    yield probe, live, tf, node, client, inboxes, tasks_dir
    client.destroy()
    executor.remove_node(node)
    node.destroy_node()
    probe.close()


def show(live, x, y, yaw):
    """Put the tool at (x, y) turned by `yaw` in the live model; returns T_base_tool."""
    config, teacher, model, pose = tool_scene(x, y, yaw)
    live.show(model, config, teacher)
    return pose


def record(probe, **fields):
    return probe.call(RecordDemo, '/query/record_demo', RecordDemo.Request(**fields), timeout=120)


def ask(client, feedback=None, **fields):
    goal = wait_future(client.send_goal_async(Manipulate.Goal(**fields), feedback_callback=feedback), 60)
    return goal, (wait_future(goal.get_result_async(), 180) if goal.accepted else None)


def test_demonstrations_from_tf_and_from_a_pose_then_the_grasp_in_a_moved_layout(rig):
    probe, live, tf, node, client, inboxes, tasks_dir = rig
    pose_a = show(live, 0.45, -0.05, 0.0)
    tf.pose = pose_a @ GRASP_IN_TOOL
    stamp = conv.seconds_to_stamp(123.25)
    from geometry_msgs.msg import PoseStamped
    first = record(probe, task='bar grasp', description='bar', pose=PoseStamped(header=conv.make_header('', stamp)))
    assert first.success, first.reason
    assert first.demonstrations == 1 and 'from tf' in first.reason
    assert tf.asked[-1] == ('base_link', 'gripper', 123_250_000_000)            # TF at the request's stamp
    assert np.allclose(matrix(first.recorded_pose.pose), tf.pose, atol=1e-6)
    assert first.recorded_pose.header.frame_id == 'base_link'

    pose_b = show(live, 0.55, 0.05, 90.0)
    given = conv.pose_stamped(pose_b @ GRASP_IN_TOOL, 'base_link', stamp)
    second = record(probe, task='bar grasp', pose=given)
    assert second.success and second.demonstrations == 2, second.reason
    listed = probe.call(ListTasks, '/query/list_tasks', ListTasks.Request())
    assert list(listed.names) == ['bar grasp'] and list(listed.demonstrations) == [2]
    assert list(listed.kinds) == ['grasp'] and list(listed.descriptions) == ['bar'] and not listed.problems

    pose_c = show(live, 0.42, 0.08, 180.0)                     # moved, and every axis of the table turned
    stages = []
    mark = inboxes['poses'].mark()
    goal, result = ask(client, feedback=lambda f: stages.append(f.feedback.stage), text='bar', top_k=3)
    assert result.status == GoalStatus.STATUS_SUCCEEDED
    answer = result.result.answer
    assert answer.status == ManipulationAnswer.FOUND, answer.reason
    assert answer.task == 'bar grasp' and answer.kind == 'grasp' and answer.header.frame_id == 'base_link'
    assert 1 <= len(answer.poses) <= 3
    truth = pose_c @ GRASP_IN_TOOL
    error_m, error_deg = pose_error(matrix(answer.poses[0].pose.pose), [truth, truth @ FLIP])
    assert error_m < 0.015 and error_deg < 15, (error_m, error_deg)
    assert answer.poses[0].pose.header == answer.header and 0 < answer.poses[0].width <= 0.08
    scores = [p.score for p in answer.poses]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.5
    counts = dict(zip(answer.count_names, answer.count_values))
    assert counts['candidates'] >= counts['collision_free'] >= counts['returned'] == len(answer.poses)
    assert {t.stage for t in answer.timings} >= {'retrieval', 'mask', 'field', 'optimise', 'rank', 'total'}
    assert [s for s in dict.fromkeys(stages)] == ['retrieval', 'mask', 'field', 'candidates', 'collisions',
                                                  'optimise', 'rank']
    array = inboxes['poses'].wait(lambda msg: len(msg.poses) == len(answer.poses), since=mark, timeout=20)
    assert array.header == answer.header
    assert np.allclose(matrix(array.poses[0]), matrix(answer.poses[0].pose.pose))
    markers = inboxes['markers'].wait(lambda msg: len(msg.markers) > 1, timeout=20)
    assert markers.markers[0].action == markers.markers[0].DELETEALL
    assert {m.ns for m in markers.markers[1:]} == {f'f3rm_manipulation/{answer.request_id}'}


def test_unknown_tasks_bad_goals_and_other_grippers_get_the_right_ending(rig):
    probe, live, tf, node, client, inboxes, tasks_dir = rig
    show(live, 0.42, 0.08, 0.0)
    _, result = ask(client, task='pour water')
    assert result.status == GoalStatus.STATUS_SUCCEEDED
    assert result.result.answer.status == ManipulationAnswer.NO_TASK and 'pour water' in result.result.answer.reason
    goal, result = ask(client)                                       # neither text nor task
    assert not goal.accepted and result is None
    goal, result = ask(client, text='bar', time_budget_s=-1.0)
    assert not goal.accepted
    probe.set_parameters('query', **{'manipulation.gripper': 'robotiq_2f140'})
    try:
        _, result = ask(client, task='bar grasp')
        assert result.status == GoalStatus.STATUS_ABORTED
        assert result.result.answer.status == ManipulationAnswer.ERROR
        assert 'robotiq_2f140' in result.result.answer.reason and 'gripper' in result.result.answer.reason
    finally:
        probe.set_parameters('query', **{'manipulation.gripper': 'grasp'})
    refused = record(probe, task='bar grasp', kind='place',
                     pose=conv.pose_stamped(np.eye(4), 'base_link', conv.seconds_to_stamp(1.0)))
    assert not refused.success and 'grasp task' in refused.reason
    elsewhere = record(probe, task='x', pose=conv.pose_stamped(np.eye(4), 'camera', conv.seconds_to_stamp(1.0)))
    assert not elsewhere.success and "'camera'" in elsewhere.reason


def test_a_cancel_stops_the_optimisation_and_a_corrupt_task_is_refused(rig):
    probe, live, tf, node, client, inboxes, tasks_dir = rig
    show(live, 0.42, 0.08, 0.0)
    probe.set_parameters('query', **{'manipulation.steps': 100000})
    try:
        stages = []
        goal = wait_future(client.send_goal_async(Manipulate.Goal(task='bar grasp'),
                                                  feedback_callback=lambda f: stages.append(f.feedback.stage)), 60)
        RosProbe.wait_until(lambda: stages.count('optimise') >= 3, 120, 'optimisation steps')
        wait_future(goal.cancel_goal_async(), 20)
        result = wait_future(goal.get_result_async(), 60)
        assert result.status == GoalStatus.STATUS_CANCELED
        answer = result.result.answer
        assert answer.status == ManipulationAnswer.ERROR and 'cancelled' in answer.reason and not answer.poses
        assert 'rank' not in stages
    finally:
        probe.set_parameters('query', **{'manipulation.steps': 40})
    npz = tasks_dir / 'bar_grasp.npz'
    npz.write_bytes(npz.read_bytes()[:100])
    listed = probe.call(ListTasks, '/query/list_tasks', ListTasks.Request())
    assert list(listed.names) == [] and any('SHA-256' in p for p in listed.problems)
    _, result = ask(client, task='bar grasp')
    assert result.status == GoalStatus.STATUS_ABORTED
    assert result.result.answer.status == ManipulationAnswer.ERROR and 'SHA-256' in result.result.answer.reason
    forgot = probe.call(ForgetDemo, '/query/forget_demo', ForgetDemo.Request(task='bar grasp', index=-1))
    assert not forgot.success and 'SHA-256' in forgot.reason
