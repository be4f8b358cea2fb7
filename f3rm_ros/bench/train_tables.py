"""The tables and ``RESULT`` lines of ``f3rm-ros bench train``, and time-to-PSNR read from two training curves.

A curve is a list of evaluation rows sorted by step (``step``, ``train_s``, ``psnr``, ...); a run's summary is what
`train.bench_one` returns.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

from . import format_table, number


def time_to(curve: List[Dict], value: float, key: str = 'psnr') -> Optional[Dict]:
    """First row of `curve` (sorted by step) whose `key` reaches `value`, or None."""
    if value is None or value != value:
        return None
    for row in curve:
        if row.get(key) is not None and row[key] >= value:
            return row
    return None


def best(curve: List[Dict], key: str = 'psnr') -> Optional[Dict]:
    """Row of `curve` with the highest `key` (the earliest of equals), or None."""
    rows = [r for r in curve if r.get(key) is not None and r[key] == r[key]]
    return max(rows, key=lambda r: (r[key], -r['step'])) if rows else None


def compare(ours: List[Dict], theirs: List[Dict], key: str = 'psnr') -> List[Dict]:
    """Time-to-PSNR from both curves for the baseline's final and best PSNR and f3rm_ros's best.

    Each entry: {'what', 'psnr', 'baseline': row or None, 'ours': row or None, 'speedup': baseline time /
    ours, or None unless both curves reach the value}.
    """
    targets = []
    if theirs:
        targets.append(('baseline final', theirs[-1]['psnr']))
        b = best(theirs)
        targets.append(('baseline best', b['psnr']))
    o = best(ours, key)
    if o is not None:
        targets.append(('f3rm_ros best', o[key]))
    rows = []
    for what, value in targets:
        hit_b, hit_o = time_to(theirs, value), time_to(ours, value, key)
        speedup = hit_b['train_s'] / hit_o['train_s'] if hit_b and hit_o and hit_o['train_s'] > 0 else None
        rows.append({'what': what, 'psnr': value, 'baseline': hit_b, 'ours': hit_o, 'speedup': speedup})
    return rows


def _fmt(value, spec: str = '.2f', none: str = 'n/a') -> str:
    if value is None or (isinstance(value, float) and value != value):
        return none
    return format(value, spec)


def _hit(row: Optional[Dict]) -> str:
    return f'{row["train_s"]:.1f} s (step {row["step"]})' if row else 'not reached'


def run_table(summary: Dict) -> str:
    """Return the side-by-side table of one run (markdown)."""
    b = summary['baseline'] or {}
    theirs = b.get('curve', [])
    curve = summary['curve']
    final = curve[-1]
    rows = [['', 'nerfstudio baseline', 'f3rm_ros', 'ratio']]
    b_rps = number(b.get('rays_per_s')) if b else float('nan')
    rows.append(['rays/s (steady state)', _fmt(b_rps / 1e3, '.1f') + 'k' if b else 'n/a',
                 _fmt(summary['rays_per_s'] / 1e3, '.1f') + 'k',
                 f'{summary["rays_per_s"] / b_rps:.2f}x' if b and b_rps == b_rps else ''])
    b_train = number(b.get('train_s')) if b else float('nan')
    rows.append([f'train time, {summary["steps"]} steps, evaluations excluded (s)', _fmt(b_train, '.1f'),
                 _fmt(summary['train_s'], '.1f'),
                 f'{b_train / summary["train_s"]:.2f}x faster' if b_train == b_train else ''])
    b_final = theirs[-1]['psnr'] if theirs else number(b.get('heldout_psnr')) if b else float('nan')
    ours_final = (f'{final["psnr"]:.2f} given / {final["psnr_aligned"]:.2f} aligned'
                  if summary['recipe'] == 'product' else f'{final["psnr"]:.2f}')
    rows.append([f'held-out PSNR @ {final["step"]} (dB)', _fmt(b_final), ours_final, ''])
    b_best, o_best = best(theirs), best(curve, 'psnr_aligned' if summary['eval_poses'] == 'aligned' else 'psnr')
    key = 'psnr_aligned' if summary['eval_poses'] == 'aligned' else 'psnr'
    rows.append(['best held-out PSNR (dB)', f'{b_best["psnr"]:.2f} @ {b_best["step"]}' if b_best else 'n/a',
                 f'{o_best[key]:.2f} @ {o_best["step"]}' if o_best else 'n/a', ''])
    for entry in summary['comparison']:
        rows.append([f'train time to {entry["what"]} PSNR {entry["psnr"]:.2f} dB',
                     _hit(entry['baseline']) if theirs else 'n/a', _hit(entry['ours']),
                     f'{entry["speedup"]:.1f}x faster' if entry['speedup'] else ''])
    rows.append(['peak GPU memory, training (GiB)', f'{_fmt(number(b.get("peak_mem")) if b else None)} (with its '
                 'renders)' if b else 'n/a', _fmt(summary['peak_train_gib']), ''])
    rows.append(['peak GPU memory, rendering (GiB)', '', _fmt(summary['peak_render_gib']), ''])
    if final['depth_err_cm'] == final['depth_err_cm']:
        rows.append(['held-out depth error, median (cm)', '', _fmt(final['depth_err_cm']), ''])
    rows.append(['held-out feature MSE', '', _fmt(final['feature_mse'], '.4f'), ''])
    return format_table(rows)


def result_line(summary: Dict) -> str:
    """One ``RESULT key=value ...`` line of a run (what results.csv holds)."""
    return 'RESULT ' + ' '.join(f'{k}={v}' for k, v in result_fields(summary).items())


def result_fields(summary: Dict) -> Dict[str, str]:
    """Return the run's headline numbers as strings ('nan' / 'none' where absent)."""
    b = summary['baseline'] or {}
    theirs = b.get('curve', [])
    final = summary['curve'][-1]
    key = 'psnr_aligned' if summary['eval_poses'] == 'aligned' else 'psnr'
    o_best, b_best = best(summary['curve'], key), best(theirs)
    fields = {
        'data': summary['name'], 'feature_weights': summary['feature_weights'], 'recipe': summary['recipe'],
        'steps': str(summary['steps']), 'rays_per_s': f'{summary["rays_per_s"]:.0f}',
        'baseline_rays_per_s': f'{number(b.get("rays_per_s")):.0f}' if b else 'nan',
        'speedup': f'{summary["rays_per_s"] / number(b.get("rays_per_s")):.2f}' if b else 'nan',
        'train_s': f'{summary["train_s"]:.2f}', 'baseline_train_s': f'{number(b.get("train_s")):.2f}' if b else 'nan',
        'psnr': f'{final["psnr"]:.2f}', 'psnr_aligned': f'{final["psnr_aligned"]:.2f}',
        'baseline_psnr': f'{theirs[-1]["psnr"]:.2f}' if theirs else 'nan',
        'best_psnr': f'{o_best[key]:.2f}' if o_best else 'nan',
        'baseline_best_psnr': f'{b_best["psnr"]:.2f}' if b_best else 'nan',
    }
    for entry in summary['comparison']:
        tag = entry['what'].replace('f3rm_ros', 'ours').replace(' ', '_')
        fields[f't_{tag}'] = f'{entry["ours"]["train_s"]:.2f}' if entry['ours'] else 'none'
        fields[f't_{tag}_baseline'] = f'{entry["baseline"]["train_s"]:.2f}' if entry['baseline'] else 'none'
        fields[f'speedup_{tag}'] = f'{entry["speedup"]:.2f}' if entry['speedup'] else 'none'
    fields.update({'peak_train_gib': f'{summary["peak_train_gib"]:.2f}',
                   'peak_render_gib': f'{summary["peak_render_gib"]:.2f}',
                   'baseline_peak_gib': f'{number(b.get("peak_mem")):.2f}' if b else 'nan',
                   'depth_err_cm': f'{final["depth_err_cm"]:.2f}', 'feature_mse': f'{final["feature_mse"]:.5f}',
                   'train_feature_loss': f'{final["train_feature_loss"]:.6f}'})
    return fields


def overall_table(summaries: List[Dict]) -> str:
    """One row per run, then the geometric mean of the speed ratios and the mean PSNR differences."""
    rows = [['data', 'feature weights', 'rays/s baseline', 'rays/s f3rm_ros', 'ratio', 'PSNR final b / f',
             'PSNR best b / f', 'time to baseline final PSNR b / f', 'time to baseline best PSNR b / f',
             'peak GiB b / f train / f render']]
    ratios, final_diffs, best_diffs = [], [], []
    for s in summaries:
        f = result_fields(s)
        speedup = number(f['speedup'])
        if speedup == speedup:
            ratios.append(speedup)
        diff = number(f['psnr_aligned' if s['eval_poses'] == 'aligned' else 'psnr']) - number(f['baseline_psnr'])
        if diff == diff:
            final_diffs.append(diff)
        diff = number(f['best_psnr']) - number(f['baseline_best_psnr'])
        if diff == diff:
            best_diffs.append(diff)
        b_rps = number(f['baseline_rays_per_s'])
        rows.append([s['name'], s['feature_weights'], f'{b_rps / 1e3:.1f}k' if b_rps == b_rps else 'n/a',
                     f'{s["rays_per_s"] / 1e3:.1f}k', f'{speedup:.2f}x' if speedup == speedup else '',
                     f'{f["baseline_psnr"]} / {f["psnr_aligned"] if s["eval_poses"] == "aligned" else f["psnr"]}',
                     f'{f["baseline_best_psnr"]} / {f["best_psnr"]}',
                     f'{f.get("t_baseline_final_baseline", "n/a")} / {f.get("t_baseline_final", "n/a")} s',
                     f'{f.get("t_baseline_best_baseline", "n/a")} / {f.get("t_baseline_best", "n/a")} s',
                     f'{f["baseline_peak_gib"]} / {f["peak_train_gib"]} / {f["peak_render_gib"]}'])
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else float('nan')
    rows.append(['overall', f'{len(summaries)} runs', '', '', f'{geo:.2f}x (geometric mean)' if ratios else '',
                 f'{sum(final_diffs) / len(final_diffs):+.2f} dB (mean f - b)' if final_diffs else '',
                 f'{sum(best_diffs) / len(best_diffs):+.2f} dB' if best_diffs else '', '', '', ''])
    return format_table(rows)
