"""f3rm_ros_interfaces as scripts/setup.sh installs it into the venv.

It imports with no PYTHONPATH or LD_LIBRARY_PATH, and a Query service server and client in two processes
exchange a request and a QueryAnswer holding a PointCloud2 and a GraspCandidate list (localhost-only DDS:
scripts/env.sh is sourced by the caller).
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ros

SERVER = textwrap.dedent('''
    import sys
    import numpy as np
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import PointCloud2, PointField
    from f3rm_ros_interfaces.msg import GraspCandidate, QueryAnswer, QueryCluster, StageTiming
    from f3rm_ros_interfaces.srv import Query

    def handle(request, response):
        answer = QueryAnswer(text=', '.join(request.positives), positives=list(request.positives),
                             negatives=list(request.negatives), status=QueryAnswer.FOUND, request_id=7)
        answer.header.frame_id = 'base_link'
        answer.clusters = [QueryCluster(name=request.positives[0], num_points=3, relevancy=0.75)]
        answer.grasps = [GraspCandidate(pose=PoseStamped(), width=0.05 + 0.01 * i, score=1.0 - 0.1 * i,
                                        cluster_index=0, approach=GraspCandidate.APPROACH_SIDE)
                         for i in range(request.max_clusters)]
        points = np.arange(15, dtype=np.float32).reshape(3, 5)
        cloud = PointCloud2(height=1, width=3, point_step=20, row_step=60, is_dense=True)
        cloud.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                        for i, n in enumerate(('x', 'y', 'z', 'rgb', 'similarity'))]
        cloud.data = points.tobytes()
        answer.heatmap = cloud
        answer.timings = [StageTiming(stage='total', seconds=0.25)]
        response.answer = answer
        return response

    rclpy.init()
    node = rclpy.create_node('iface_server')
    node.create_service(Query, 'iface_test_query', handle)
    print('ready', flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
''')

CLIENT = textwrap.dedent('''
    import numpy as np
    import rclpy
    from f3rm_ros_interfaces.msg import GraspCandidate, QueryAnswer
    from f3rm_ros_interfaces.srv import Query

    rclpy.init()
    node = rclpy.create_node('iface_client')
    client = node.create_client(Query, 'iface_test_query')
    assert client.wait_for_service(timeout_sec=20.0), 'no service'
    future = client.call_async(Query.Request(positives=['mug'], negatives=['object'], max_clusters=2))
    rclpy.spin_until_future_complete(node, future, timeout_sec=20.0)
    answer = future.result().answer
    assert answer.status == QueryAnswer.FOUND and answer.text == 'mug' and answer.request_id == 7
    assert list(answer.negatives) == ['object'] and answer.header.frame_id == 'base_link'
    assert [g.approach for g in answer.grasps] == [GraspCandidate.APPROACH_SIDE] * 2
    assert abs(answer.grasps[1].width - 0.06) < 1e-6 and answer.clusters[0].num_points == 3
    cloud = np.frombuffer(bytes(answer.heatmap.data), dtype=np.float32).reshape(3, 5)
    assert [f.name for f in answer.heatmap.fields] == ['x', 'y', 'z', 'rgb', 'similarity']
    assert cloud[2, 4] == 14.0 and answer.timings[0].stage == 'total'
    print('ok', flush=True)
''')


def clean_env():
    """Return the caller's environment without the paths a ROS install or a shell would add."""
    env = dict(os.environ)
    for key in ('PYTHONPATH', 'LD_LIBRARY_PATH', 'AMENT_PREFIX_PATH', 'CMAKE_PREFIX_PATH',
                '_ROS_WHEELS_BOOTSTRAP_COMPLETE'):
        env.pop(key, None)
    return env


def test_interfaces_import_without_environment_variables():
    out = subprocess.run(
        [sys.executable, '-c', 'from f3rm_ros_interfaces.srv import Query; '
         'from f3rm_ros_interfaces.msg import QueryAnswer, GraspCandidate, QueryCluster, StageTiming; '
         'print(QueryAnswer.NOT_PRESENT, GraspCandidate.APPROACH_TOP, '
         'sorted(Query.Request.get_fields_and_field_types()))'],
        env=clean_env(), cwd='/', capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('1 0 [')
    assert 'threshold_mode' in out.stdout


def test_query_service_between_two_processes():
    env = clean_env()
    server = subprocess.Popen([sys.executable, '-c', SERVER], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == 'ready', server.stderr.read()
        client = subprocess.run([sys.executable, '-c', CLIENT], env=env, capture_output=True, text=True,
                                timeout=60)
        assert client.returncode == 0 and client.stdout.strip() == 'ok', client.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)
