"""``f3rm-ros bench faults``' bad-input catalogue against a real capture node process, over DDS on this machine.

Each of the campaign's capture cases (encodings, sizes, stamps, NaN and non-unit poses, camera_info, distortion,
depth, masks, labels, label names) is sent in a short burst; the capture node's status on /diagnostics must name
the problem, its log must stay throttled, and the next good frame must still become a keyframe. Capture
parameters out of range are refused with the reason. (The full campaign, with kills, a full disk, checkpoints,
a query flood and a long stream, is the benchmark: its table is in docs/faults.md.)
"""
import os

import pytest

from f3rm_ros.harness import bad_inputs
from f3rm_ros.harness.fault_campaign import Campaign

pytestmark = pytest.mark.ros

os.environ.setdefault('HF_HUB_OFFLINE', '1')


def test_every_bad_capture_input_gets_a_clear_throttled_error_and_the_node_keeps_serving(tmp_path):
    cases = bad_inputs.capture_cases()
    assert len(cases) + len(bad_inputs.parameter_cases()) + len(bad_inputs.query_cases()) >= 25
    campaign = Campaign(tmp_path)
    try:
        campaign.bad_inputs(burst=3, gap_s=0.0, query=False)
    except AssertionError:
        print(campaign.procs.tails())
        raise
    finally:
        campaign.close()
    rows = campaign.results.rows
    capture_rows = [r for r in rows if r.fault.startswith('capture: ')]
    parameter_rows = [r for r in rows if r.fault.startswith('parameter: ')]
    assert len(capture_rows) == len(cases)
    assert len(parameter_rows) == sum(c.node == 'capture' for c in bad_inputs.parameter_cases())
    failed = [f'{r.fault}: {r.result}' for r in rows if not r.ok]
    assert not failed, '\n'.join(failed)
    for case, row in zip(cases, capture_rows):
        assert case.expect in row.result and 'next good frame kept: True' in row.result, row
