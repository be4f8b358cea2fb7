"""``ns-train f3rm-ros``: nerfstudio's trainer on a tiny table; its f3rm_ros checkpoint loads in f3rm-ros tools."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from f3rm_ros.cli import main
from f3rm_ros.core.evaluation import load_for_study
from f3rm_ros.core.trainer import read_checkpoint

from study_support import tiny_dataset, tiny_scene

NS_TRAIN = Path(sys.executable).with_name('ns-train')
STEPS = 4
SMALL_MODEL = ['--pipeline.model.log2-hashmap-size', '15', '--pipeline.model.num-levels', '8',
               '--pipeline.model.max-res', '256', '--pipeline.model.hidden-dim', '32',
               '--pipeline.model.hidden-dim-color', '32', '--pipeline.model.num-nerf-samples-per-ray', '24',
               '--pipeline.model.num-proposal-samples-per-ray', '48', '24']


def ns_train_missing():
    """Say why ns-train cannot run here ('' when it can): nerfstudio's start-up imports (requirements-nerfstudio)."""
    if not NS_TRAIN.exists():
        return f'{NS_TRAIN} does not exist'
    for module in ('appdirs', 'pathos', 'rawpy', 'gsplat', 'pyquaternion', 'pytorch_msssim', 'tensorly',
                   'fpsample', 'splines'):
        if importlib.util.find_spec(module) is None:
            return f'{module} is not installed (requirements-nerfstudio.txt)'
    return ''


@pytest.mark.skipif(bool(ns_train_missing()), reason=ns_train_missing() or 'ns-train available')
def test_ns_train_f3rm_ros_writes_a_checkpoint_the_f3rm_ros_tools_load(tmp_path, capsys):
    scene = tiny_scene(views=10, width=48, height=36)
    data = tiny_dataset(tmp_path / 'data', scene)
    out = tmp_path / 'ns'
    env = dict(os.environ, HF_HUB_OFFLINE='1')
    run = subprocess.run([str(NS_TRAIN), 'f3rm-ros', '--data', str(data), '--output-dir', str(out),
                          '--max-num-iterations', str(STEPS), '--steps-per-save', '2', '--vis', 'tensorboard',
                          '--machine.device-type', 'cpu', '--mixed-precision', 'False',
                          '--pipeline.datamanager.preset', 'cpu-tiny', '--pipeline.datamanager.teacher', 'labels',
                          '--pipeline.datamanager.train-num-rays-per-batch', '128', *SMALL_MODEL],
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    run_dir = next(out.rglob('config.yml')).parent
    # the dataset's frame mapped into the field's unit box by its workspace entry, as f3rm-ros train does
    transform = json.loads((run_dir / 'dataparser_transforms.json').read_text())
    assert np.allclose(np.array(transform['transform'])[:, 3], -np.array([0.5, 0.0, 0.14]))
    assert transform['scale'] == pytest.approx(2 / 0.6)
    exported = run_dir / 'nerfstudio_models' / 'f3rm_ros' / 'latest.ckpt'
    state = read_checkpoint(exported)
    assert state['step'] == STEPS and state['teacher']['name'] == 'labels'
    assert state['config']['workspace']['min_xyz'] == [0.2, -0.3, -0.02]
    # every tensor fits the model f3rm_ros builds from the exported config: the same network ...
    model, config, _, notes = load_for_study(exported, 'cpu')
    assert notes == [] and config.feature_field.feature_dim == 16
    # ... with nerfstudio's own final weights
    own = torch.load(sorted((run_dir / 'nerfstudio_models').glob('step-*.ckpt'))[-1], map_location='cpu',
                     weights_only=False)['pipeline']
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, own['_model.' + name]), name
    # and the f3rm-ros tools take it
    assert main(['query', '--checkpoint', str(exported), '--text', 'mug', '--output', str(tmp_path / 'q'),
                 '--width', '32']) == 0
    assert main(['eval', '--checkpoint', str(exported), '--data', str(data), '--downscale', '1',
                 '--eval-frames', '4', '--output', str(tmp_path / 'eval')]) == 0
    assert 'heatmap:' in capsys.readouterr().out
