"""Configuration: presets, YAML overlays, clear errors, and the YAML files shipped in config/."""
import pytest

from f3rm_ros.core.config import F3RMConfig, flatten, from_dict, make_config, to_dict, unflatten

from repo_root import ROOT

CONFIG_DIR = ROOT / 'config'


def test_gpu_preset_is_f3rm_defaults():
    ff = make_config('gpu').feature_field
    assert (ff.num_levels, ff.features_per_level, ff.log2_hashmap_size) == (12, 8, 19)
    assert (ff.min_resolution, ff.max_resolution, ff.pe_frequencies) == (16, 128, 6)
    assert (ff.hidden_dim, ff.num_layers, ff.feature_dim) == (64, 2, 768)
    assert make_config('gpu').model.feature_loss_weight == pytest.approx(1e-3)


def test_yaml_overlay_and_overrides(tmp_path):
    overlay = tmp_path / 'o.yaml'
    overlay.write_text('f3rm:\n  trainer: {steps: 7}\n  query: {negatives: [a, b]}\n')
    config = make_config('cpu-tiny', [overlay], {'trainer': {'rays_per_batch': 64}})
    assert config.trainer.steps == 7 and config.trainer.rays_per_batch == 64
    assert config.query.negatives == ('a', 'b')


def test_unknown_key_and_wrong_type_are_rejected(tmp_path):
    with pytest.raises(KeyError, match='trainer.stepz'):
        make_config('cpu', overrides={'trainer': {'stepz': 1}})
    with pytest.raises(TypeError, match='trainer.steps'):
        make_config('cpu', overrides={'trainer': {'steps': 'many'}})
    with pytest.raises(KeyError, match='unknown preset'):
        make_config('quantum')


def test_dict_and_flat_round_trips():
    config = make_config('cpu-tiny')
    assert from_dict(to_dict(config)) == config
    flat = dict(flatten(config))
    assert flat['feature_field.num_levels'] == config.feature_field.num_levels
    assert from_dict(unflatten(flat)) == config


def test_a_checkpoint_config_with_a_field_under_its_old_name_loads():
    old = to_dict(make_config('cpu-tiny'))
    old['model']['depth_loss_weight'] = old['model'].pop('depth_loss_mult')   # written before the rename
    assert from_dict(old) == make_config('cpu-tiny')


def test_a_yaml_file_with_a_field_under_its_old_name_is_read_as_the_new(tmp_path, caplog):
    (tmp_path / 'old.yaml').write_text('model:\n  depth_loss_weight: 0.25\n')
    with caplog.at_level('WARNING'):
        config = make_config('cpu-tiny', [tmp_path / 'old.yaml'])
    assert config.model.depth_loss_mult == 0.25
    assert 'model.depth_loss_weight is now model.depth_loss_mult' in caplog.text


@pytest.mark.parametrize('path', sorted(CONFIG_DIR.glob('*.yaml')), ids=lambda p: p.name)
def test_shipped_yaml_files_load(path):
    assert isinstance(make_config('gpu', [path]), F3RMConfig)
