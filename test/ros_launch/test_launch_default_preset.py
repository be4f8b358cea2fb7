"""``ros2 launch`` with no preset given: the machine's preset, said once, and a Ctrl-C that ends every node cleanly.

The same replayed synthetic table as test_workspace_build's cpu-tiny run, but the parameters name no preset, so
every node takes ``preset: auto`` (config/f3rm.yaml's default too): ``gpu`` where CUDA is available, ``cpu``
elsewhere. F3RM's gpu sizes on two CPU cores took 12 s a step and the trainer could not stop within launch's
5 s; with auto a CPU machine trains the cpu preset. The trainer says which preset it took in its log and on
/diagnostics; SIGINT comes once training is under way (the cpu preset's steps on a loaded CI machine are long:
the stop must not wait for one), and every process must end with exit 0 before launch's SIGTERM, the trainer
having written a checkpoint that loads and holds the step its log names.
"""
import copy
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from test_workspace_build import SCAN_PARAMS, check_shutdown, launch_env, start_launch

pytestmark = pytest.mark.ros


def test_default_preset_is_the_machines_and_ctrl_c_ends_every_node_cleanly(workspace, tmp_path):
    from f3rm_ros.core.training.trainer import load_model
    from f3rm_ros.harness.testing import RosProbe
    from f3rm_ros.ros.diagnostics import status_values
    expected = 'gpu' if torch.cuda.is_available() else 'cpu'
    ws = workspace[0]
    params = copy.deepcopy(SCAN_PARAMS)
    del params['/**']['ros__parameters']['preset']                         # no preset given: auto
    params['/**']['ros__parameters'].update(dataset_dir=str(tmp_path / 'scan'), checkpoint_dir=str(tmp_path / 'ckpt'))
    (tmp_path / 'params.yaml').write_text(yaml.safe_dump(json.loads(json.dumps(params))))
    probe, run = RosProbe(name='f3rm_probe_auto'), None
    try:
        run = start_launch(ws, 'scan_and_train.launch.py',
                           ['replay:=true', 'localhost_only:=true', f'params_file:={tmp_path / "params.yaml"}'],
                           launch_env(probe.domain_id, tmp_path / 'ros_log'), tmp_path / 'launch.log')
        said = run.wait_for(r'\[trainer\]: (preset auto: (\w[\w-]*)[^\n]*)', 120)
        assert said.group(2) == expected, said.group(1)
        status = probe.status('/trainer')
        first = status.wait(lambda msg: int(status_values(msg).get('step', 0)) >= 2, 600, 'two training steps')
        assert status_values(first)['preset'].startswith(f'preset auto: {expected}'), status_values(first)
        run.interrupt(whole_group=True)
        code = run.wait(30)
        check_shutdown(run, 4, code)
    finally:
        if run is not None:
            run.kill()
        probe.close()
    text = run.text()
    assert len(re.findall(r'\[trainer\]: preset auto', text)) == 1, 'said more than once'
    final = re.search(r'\[trainer\]: final checkpoint (\S+) \(step (\d+)\)', text)
    assert final, run.tail()
    _, config, state = load_model(Path(final.group(1)), device='cpu')
    assert state['step'] == int(final.group(2)) >= 1
    assert config.model.hidden_dim == (64 if expected == 'gpu' else 48)     # the preset's sizes were trained
    print(f'default preset ({expected}): Ctrl-C at step >= 2 ended every process cleanly; final checkpoint step '
          f'{state["step"]}')
