"""What ``f3rm-ros bench semantic`` records per query and per scene, and its summary, tables and RESULT line.

Kept apart from `semantic` (scenes, training, scoring, the command) so that benches that score queries the same way
(`distortion`, `online`) share one summary.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import format_table

SUCCESS_RADII_M = (0.02, 0.05)
PERCENTILES = (1, 5, 50, 95, 99)


@dataclass
class QueryScore:
    """One query of one scene (a present object, or a catalogue object that is not there)."""

    scene: str
    query: str
    present: bool
    status: str               # 'found' | 'not_present'
    peak: float               # best cluster's peak relevancy before the verdict (nan: no cluster formed)
    best_relevancy: float     # the most relevant voxel (nan: no occupied voxel)
    error_m: float            # top cluster centroid -> true centre, 3D (inf: not found; nan: absent object)
    error_xy_m: float         # the same in the table plane: what a top-down grasp needs most
    on_object: Optional[bool]  # centroid inside the true box + 1 cm (None: absent, or the truth has no box)
    clusters: int
    latency_s: float          # text -> answer with the scene's voxels cached
    centroid: Optional[List[float]]
    truth: Optional[List[float]]
    reason: str = ''
    grasps: int = 0                   # grasps returned for the answer's object (cluster 0)
    grasped: Optional[bool] = None    # one of them collision-free (field and truth); None: not a found present object
    grasp: str = ''                   # the best grasp's approach and opening, or why there is none

    @property
    def correct(self) -> bool:
        """Absent: answered not_present. Present: found within 2 cm."""
        if not self.present:
            return self.status == 'not_present'
        return self.error_m <= SUCCESS_RADII_M[0]


@dataclass
class SceneRun:
    """Training and field evaluation of one scene."""

    scene: str
    objects: List[str]
    absent: List[str]
    frames: int
    steps: int
    train_s: float
    heldout_psnr: float
    field_s: float            # density over the grid + features of the occupied voxels, once per scene
    occupied_voxels: int
    grid_voxels: int


def summary_rows(scores: Sequence[QueryScore]) -> Dict[str, float]:
    """Rates over the present-object queries, ``absent_correct`` over the absent ones, medians.

    within_Xcm: found and the centroid within X cm of the true centre; on_object: found and inside the true box
    + 1 cm (over the queries whose truth has a box; nan when none has); found: answered 'found'; worst_error_m:
    the largest centroid error of a present object (inf when one was not found);
    absent_correct: absent objects answered 'not_present' (nan without absent queries).
    """
    present = [s for s in scores if s.present]
    absent = [s for s in scores if not s.present]
    errors = np.array([s.error_m for s in present], dtype=np.float64)
    out: Dict[str, float] = {}
    for r in SUCCESS_RADII_M:
        out[f'within_{round(r * 100)}cm'] = float(np.mean(errors <= r)) if len(errors) else float('nan')
    boxed = [s.on_object for s in present if s.on_object is not None]
    out['on_object'] = float(np.mean(boxed)) if boxed else float('nan')
    out['found'] = float(np.mean([s.status == 'found' for s in present])) if present else float('nan')
    graspable = [s.grasped for s in present if s.grasped is not None]
    out['grasped'] = float(np.mean(graspable)) if graspable else float('nan')
    out['absent_correct'] = (float(np.mean([s.status == 'not_present' for s in absent])) if absent
                             else float('nan'))
    out['median_error_m'] = float(np.median(errors)) if len(errors) else float('nan')
    # the worst present object (inf when one was missed): a planner meets every answer, not the median one
    out['worst_error_m'] = float(np.max(errors)) if len(errors) else float('nan')
    out['median_latency_s'] = statistics.median(s.latency_s for s in scores) if scores else float('nan')
    out['queries'] = len(present)
    out['absent'] = len(absent)
    out['layouts'] = len({s.scene for s in scores})
    return out


def result_line(summary: Mapping[str, float]) -> str:
    """Return the ``RESULT ...`` line of a summary (fractions with 3 decimals, the median error in cm)."""
    return (f'RESULT layouts={summary["layouts"]} queries={summary["queries"]} '
            f'within_2cm={summary["within_2cm"]:.3f} within_5cm={summary["within_5cm"]:.3f} '
            f'on_object={summary["on_object"]:.3f} absent={summary["absent"]} '
            f'absent_correct={summary["absent_correct"]:.3f} found={summary["found"]:.3f} '
            f'grasped={summary["grasped"]:.3f} '
            f'median_cm={summary["median_error_m"] * 100:.2f} worst_cm={summary["worst_error_m"] * 100:.2f} '
            f'median_latency_ms={summary["median_latency_s"] * 1000:.1f}')


def peak_distribution(scores: Sequence[QueryScore]) -> Dict[str, Dict[str, float]]:
    """Peak relevancy of the best cluster, present vs absent queries: count, no-cluster count, min, percentiles, max.

    A query whose relevancy never forms a cluster (every voxel at the 0.5 floor, or too few voxels) has no
    peak: it is not present whatever ``query.present_relevancy`` says, and is only counted.
    """
    out = {}
    for kind, present in (('present', True), ('absent', False)):
        peaks = np.array([s.peak for s in scores if s.present == present], dtype=np.float64)
        have = peaks[np.isfinite(peaks)]
        row = {'n': int(len(peaks)), 'no_cluster': int(len(peaks) - len(have))}
        if len(have):
            row.update({'min': float(have.min()), 'max': float(have.max())})
            row.update({f'p{p}': float(np.percentile(have, p)) for p in PERCENTILES})
        out[kind] = row
    return out


def separating_bound(distribution: Mapping[str, Mapping[str, float]]) -> Optional[Tuple[float, float]]:
    """(highest absent peak, lowest present peak) when every present peak is above every absent one, else None."""
    low = distribution['present'].get('min')
    high = distribution['absent'].get('max', 0.5)
    if low is None or high >= low:
        return None
    return float(high), float(low)


def print_report(runs: Sequence[SceneRun], scores: Sequence[QueryScore], present_relevancy: float) -> Dict:
    """Print the per-query, per-scene and calibration tables and the RESULT line; return the summary."""
    print('\nPer query (error: top cluster centroid to the true centre; on object: inside the true box + 1 cm)')
    rows = [('scene', 'query', 'there', 'status', 'peak', 'error 3D (cm)', 'error xy (cm)', '<= 2 cm', 'on object',
             'clusters', 'latency (ms)', 'grasped', 'best grasp')]
    yes_no = {None: '-', True: 'yes', False: 'no'}
    for s in scores:
        rows.append((s.scene, s.query, 'yes' if s.present else 'no', s.status, f'{s.peak:.3f}',
                     f'{s.error_m * 100:.1f}' if s.present else '-', f'{s.error_xy_m * 100:.1f}' if s.present else '-',
                     ('yes' if s.error_m <= 0.02 else 'no') if s.present else '-',
                     yes_no[s.on_object], s.clusters, f'{s.latency_s * 1000:.1f}', yes_no[s.grasped],
                     s.grasp[:60] or '-'))
    print(format_table(rows))
    print('\nPer object kind (grasped: found answers with a collision-free grasp on the object)')
    rows = [('object', 'asked', 'found', 'within 2 cm', 'grasped', 'approaches')]
    for kind in sorted({s.query for s in scores if s.present}):
        mine = [s for s in scores if s.present and s.query == kind]
        summary = summary_rows(mine)
        approaches = sorted({s.grasp.split()[0] for s in mine if s.grasps})
        rows.append((kind, len(mine), f'{summary["found"]:.0%}', f'{summary["within_2cm"]:.0%}',
                     '-' if np.isnan(summary['grasped']) else f'{summary["grasped"]:.0%}', ' '.join(approaches) or '-'))
    print(format_table(rows))
    print('\nPer scene')
    rows = [('scene', 'frames', 'steps', 'train (s)', 'held-out PSNR (dB)', 'field eval (s)', 'occupied voxels',
             'within 2 cm', 'on object', 'absent correct')]
    for r in runs:
        mine = summary_rows([s for s in scores if s.scene == r.scene])
        rows.append((r.scene, r.frames, r.steps, f'{r.train_s:.0f}', f'{r.heldout_psnr:.1f}', f'{r.field_s:.2f}',
                     f'{r.occupied_voxels} / {r.grid_voxels}', f'{mine["within_2cm"]:.0%}', f'{mine["on_object"]:.0%}',
                     f'{mine["absent_correct"]:.0%}' if mine['absent'] else '-'))
    print(format_table(rows))
    misses = [s for s in scores if not s.correct]
    if misses:
        print('\nMisses: ' + '; '.join(
            f'{s.scene} {s.query} ' + (f'{s.status}, {s.error_m * 100:.1f} cm, peak {s.peak:.3f}' if s.present
                                       else f'absent but {s.status}, peak {s.peak:.3f}') for s in misses))
    distribution = peak_distribution(scores)
    print(f'\nPeak relevancy of the best cluster (mean of its 10 most relevant voxels), which '
          f'query.present_relevancy = {present_relevancy:.3f} is compared with')
    rows = [('queries', 'n', 'no cluster', 'min') + tuple(f'{p} %' for p in PERCENTILES) + ('max',)]
    for kind, row in distribution.items():
        rows.append((kind, row['n'], row['no_cluster'], *(f'{row[k]:.3f}' if k in row else '-' for k in
                                                          ['min'] + [f'p{p}' for p in PERCENTILES] + ['max'])))
    print(format_table(rows))
    bound = separating_bound(distribution)
    if bound is None:
        print('present and absent peaks overlap: no bound separates them all')
    else:
        print(f'any bound in ({bound[0]:.3f}, {bound[1]:.3f}] separates them (midpoint {sum(bound) / 2:.3f})')
    total = summary_rows(scores)
    print()
    print(result_line(total))
    return {'summary': total, 'peaks': distribution, 'separating_bound': bound}
