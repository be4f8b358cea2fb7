"""`f3rm-ros bench train`: like-for-like plumbing a user reads (RESULT lines, results.csv, curve.csv), on a CPU.

The baseline is a stand-in script that prints what ns_baseline.py prints (EVAL lines on EVAL_EVERY, a RESULT
line with FEAT_WEIGHTS echoed), so the test checks what the command hands the baseline and what it makes of
the two curves, not any speed.
"""
import csv
import json
import os
import sys
import textwrap

import pytest

from f3rm_ros.bench import parse_eval_lines, parse_result_line
from f3rm_ros.bench.train_tables import compare
from f3rm_ros.cli import main
from f3rm_ros.core.scenes import table as scenes
from f3rm_ros.core.capture.frames import write_dataset

os.environ.setdefault('HF_HUB_OFFLINE', '1')

# The stand-in's curve: PSNR 10, 11, 12 ... at every EVAL_EVERY steps, train_s = step / 10.
FAKE_BASELINE = textwrap.dedent('''
    import os, sys
    steps, every = int(sys.argv[2]), int(os.environ.get('EVAL_EVERY', 0))
    marks = [s for s in range(every, steps, every)] if every else []
    for i, s in enumerate(marks + [steps]):
        print(f'EVAL step={s} train_s={s / 10:.2f} psnr={10 + i:.2f}')
    print(f'RESULT dev=cpu feat={sys.argv[3]} amp=True steps={steps} rays_per_s=1000 s_per_step=4.0ms '
          f'train_wall=9.9s heldout_psnr={10 + len(marks):.2f} peak_mem=0.00GiB train_s={steps / 10:.1f}s '
          f'feat_weights={os.environ.get("FEAT_WEIGHTS", "live")} eval_every={every} rays={os.environ["RAYS"]}')
''')


@pytest.fixture(scope='module')
def two_datasets(tmp_path_factory):
    """Two tiny synthetic scans (one with depth maps, as written by the product)."""
    root = tmp_path_factory.mktemp('bench_train')
    paths = []
    for seed in (3, 4):
        scene = scenes.make_scene(seed=seed, object_names=['mug'], num_views=10, width=40, height=30)
        paths.append(write_dataset(root / f'table{seed}', scene.frames, scene.dataset_metadata()))
    fake = root / 'fake_baseline.py'
    fake.write_text(FAKE_BASELINE)
    return paths, fake


def test_time_to_psnr_is_read_from_both_curves_with_a_ratio_only_where_both_reach():
    """Baseline final and best, f3rm_ros best; a value one side never reaches gets no ratio."""
    theirs = [{'step': 100, 'train_s': 10.0, 'psnr': 18.0}, {'step': 200, 'train_s': 20.0, 'psnr': 20.5},
              {'step': 300, 'train_s': 30.0, 'psnr': 20.0}]
    ours = [{'step': 100, 'train_s': 1.0, 'psnr': 19.0}, {'step': 200, 'train_s': 2.0, 'psnr': 20.2},
            {'step': 300, 'train_s': 3.0, 'psnr': 21.0}]
    rows = {r['what']: r for r in compare(ours, theirs)}
    assert rows['baseline final']['psnr'] == 20.0
    assert rows['baseline final']['baseline']['step'] == 200 and rows['baseline final']['ours']['step'] == 200
    assert rows['baseline final']['speedup'] == pytest.approx(20.0 / 2.0)
    assert rows['baseline best']['psnr'] == 20.5 and rows['baseline best']['ours']['step'] == 300
    assert rows['baseline best']['speedup'] == pytest.approx(20.0 / 3.0)
    assert rows['f3rm_ros best']['psnr'] == 21.0 and rows['f3rm_ros best']['baseline'] is None
    assert rows['f3rm_ros best']['speedup'] is None


@pytest.mark.slow
def test_bench_train_runs_several_datasets_and_modes_like_for_like(two_datasets, tmp_path, capsys):
    """Two datasets x both feature-weight modes: the baseline runs in the matching mode on our schedule.

    Per run a RESULT line and a results.csv row; curve.csv holds both sides on the same steps; the last
    RESULT line is the overall one.
    """
    paths, fake = two_datasets
    out = tmp_path / 'out'
    code = main(['bench', 'train', '--data', *map(str, paths), '--preset', 'cpu-tiny', '--steps', '6',
                 '--eval-every', '3', '--feature-dim', '16', '--rays', '64', '--baseline', str(fake),
                 '--feature-weights', 'live,detached', '--teacher', 'image', '--out', str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    results = [parse_result_line(line) for line in printed.splitlines() if line.startswith('RESULT ')]
    runs, overall = results[:-1], results[-1]
    assert [(r['data'], r['feature_weights']) for r in runs] == [
        ('table3', 'live'), ('table3', 'detached'), ('table4', 'live'), ('table4', 'detached')]
    assert overall['runs'] == '4' and float(overall['speedup_geomean']) > 0
    for run in runs:
        assert run['recipe'] == 'product' and run['steps'] == '6'
        assert run['baseline_rays_per_s'] == '1000' and run['baseline_psnr'] == '11.00'  # its final EVAL line
        assert run['baseline_best_psnr'] == '11.00'
        assert float(run['peak_train_gib']) == 0.0 and float(run['rays_per_s']) > 0      # CPU: no GPU memory
        assert run['t_baseline_final_baseline'] == '0.60'                              # step 6 of its curve
        assert float(run['depth_err_cm']) >= 0 and float(run['feature_mse']) >= 0      # these scans have depth
        mode = 'detach' if run['feature_weights'] == 'detached' else 'live'
        log = (out / f'{run["data"]}-{run["feature_weights"]}' / 'baseline.log').read_text()
        assert f'feat_weights={mode}' in log and 'eval_every=3' in log and 'rays=4096' in log
    with open(out / 'results.csv') as handle:
        rows = list(csv.DictReader(handle))
    assert [(r['data'], r['feature_weights'], r['speedup']) for r in rows] == [
        (r['data'], r['feature_weights'], r['speedup']) for r in runs]
    with open(out / 'table3-live' / 'curve.csv') as handle:
        curve = list(csv.DictReader(handle))
    steps = {side: [int(r['step']) for r in curve if r['side'] == side] for side in ('baseline', 'f3rm_ros')}
    assert steps == {'baseline': [3, 6], 'f3rm_ros': [3, 6]}                        # the same schedule
    summary = json.loads((out / 'table3-live' / 'summary.json').read_text())
    assert [e['what'] for e in summary['comparison']] == ['baseline final', 'baseline best', 'f3rm_ros best']
    assert (out / 'table3-live' / 'heldout_rgb.png').exists()
    assert 'peak GPU memory, rendering (GiB)' in printed and '| overall' in printed


@pytest.mark.slow
def test_a_saved_baseline_output_is_read_with_its_curve(two_datasets, tmp_path, capsys):
    """--baseline-result takes a saved baseline log (RESULT and EVAL lines); a mode mismatch is warned about."""
    paths, fake = two_datasets
    log = tmp_path / 'baseline.log'
    log.write_text('EVAL step=2 train_s=0.5 psnr=9.00\nEVAL step=4 train_s=1.0 psnr=30.00\n'
                   'RESULT rays_per_s=500 train_s=1.0s heldout_psnr=30.00 peak_mem=1.5GiB feat_weights=live\n')
    code = main(['bench', 'train', '--data', str(paths[0]), '--preset', 'cpu-tiny', '--steps', '4',
                 '--eval-every', '2', '--feature-dim', '16', '--rays', '64', '--baseline-result', str(log),
                 '--feature-weights', 'detached', '--recipe', 'baseline', '--no-picture'])
    printed = capsys.readouterr().out
    assert code == 0, printed
    run = parse_result_line(printed.split('RESULT overall')[0])
    assert run['baseline_psnr'] == '30.00' and run['t_baseline_final_baseline'] == '1.00'
    assert run['t_baseline_final'] == 'none' and run['speedup_baseline_final'] == 'none'   # not reached: no ratio
    assert run['psnr'] == run['psnr_aligned']                                        # no pose refinement
    assert 'not like for like' in printed
    assert parse_eval_lines('EVAL step=4 train_s=1.0 psnr=30.00\nEVAL step=2 train_s=0.5 psnr=9.00')[0]['step'] == 2


def test_unknown_feature_weights_mode_is_refused(two_datasets):
    """A typo in --feature-weights stops before any training, naming the modes."""
    paths, _ = two_datasets
    with pytest.raises(SystemExit, match='live'):
        main(['bench', 'train', '--data', str(paths[0]), '--preset', 'cpu-tiny', '--feature-weights', 'alive'])


if __name__ == '__main__':
    sys.exit(pytest.main([__file__, '-x', '-q']))
