"""`bench changes` as a user runs it, on a scan far too short to follow a change: the misses it must report.

The numbers (seconds until the answers follow a moved, removed or added object) come from real runs; here: one
RESULT line per kind with the time limit, misses as inf, and the trials' records in the JSON.
"""
import json
import math

import pytest

from f3rm_ros.bench import parse_result_line
from f3rm_ros.cli import main

pytestmark = pytest.mark.slow


def test_bench_changes_reports_each_kind_and_counts_a_change_never_followed_as_a_miss(tmp_path, capsys):
    out = tmp_path / 'changes.json'
    # 3 training steps cannot learn the table, let alone a change: every trial must miss within the 5 s limit
    code = main(['bench', 'changes', '--seeds', '4', '--kinds', 'moved', 'removed', '--device', 'cpu', '--views', '6',
                 '--rescan', '2', '--width', '48', '--height', '36', '--steps', '3', '--rate', '20', '--poll', '0.2',
                 '--limit', '5', '--json', str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    lines = [line for line in printed.splitlines() if line.startswith('RESULT ')]
    assert [parse_result_line(line)['change'] for line in lines] == ['moved', 'removed']
    for line in lines:
        result = parse_result_line(line)
        assert result['trials'] == '1' and result['ok'] == '0.00' and result['limit_s'] == '5'
        assert math.isinf(float(result['worst_s'])) and math.isinf(float(result['median_s']))
    assert 'time limit: 5 s after the last rescan keyframe' in printed
    data = json.loads(out.read_text())
    assert [t['kind'] for t in data['trials']] == ['moved', 'removed'] and data['limit_s'] == 5.0
    for trial in data['trials']:
        assert trial['met_s'] is None and trial['seed'] == 4 and trial['object']
        late = [r for r in trial['rounds'] if r['after_last_keyframe']]
        assert late and all(r['step'] >= 3 for r in late)


def test_bench_changes_on_a_schedule_of_steps_asks_once_after_them(tmp_path, capsys):
    out = tmp_path / 'stepped.json'
    code = main(['bench', 'changes', '--seeds', '4', '--kinds', 'removed', '--device', 'cpu', '--views', '6',
                 '--rescan', '2', '--width', '48', '--height', '36', '--steps', '3', '--after-steps', '4',
                 '--steps-per-keyframe', '2', '--json', str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = parse_result_line(next(line for line in printed.splitlines() if line.startswith('RESULT ')))
    assert result['change'] == 'removed' and result['trials'] == '1' and result['after_steps'] == '4'
    assert result['ok'] == '0.00' and 'limit_s' not in result   # 3 steps never learn the table: a miss
    assert 'answers asked 4 training steps after the last rescan keyframe' in printed
    trial = json.loads(out.read_text())['trials'][0]
    assert trial['met_s'] is None and len(trial['rounds']) == 1 and trial['rounds'][0]['after_last_keyframe']
