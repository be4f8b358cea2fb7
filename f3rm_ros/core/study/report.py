"""A run's report as Markdown (+ JSON): what ran, pictures, per-query localisation, training curve, timings."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import matplotlib

matplotlib.use('Agg')  # reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class QueryOutcome:
    """One text query's answer, and its error when the true object centre is known."""

    text: str
    overlay_png: str
    ply: str
    num_points: int
    num_clusters: int
    top_centroid: Optional[List[float]] = None
    top_relevancy: Optional[float] = None
    true_center: Optional[List[float]] = None
    error_m: Optional[float] = None
    latency_s: Optional[float] = None
    status: str = ''
    reason: str = ''
    num_grasps: int = 0
    grasp_width_m: Optional[float] = None


@dataclass
class RunReport:
    """Everything the report page shows."""

    title: str
    teacher: str
    teacher_reason: str
    source: str
    keyframes: int
    steps: int
    heldout_psnr: Optional[float]
    curve: List[Dict[str, float]] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    queries: List[QueryOutcome] = field(default_factory=list)
    pictures: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


def plot_curve(curve: List[Dict[str, float]], path: Path) -> Path:
    """Training loss and PSNR against step, as a PNG."""
    figure, (loss_axis, psnr_axis) = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [row['step'] for row in curve]
    loss_axis.semilogy(steps, [row['loss'] for row in curve])
    loss_axis.set_xlabel('step')
    loss_axis.set_ylabel('training loss')
    psnr_axis.plot(steps, [row['psnr'] for row in curve])
    psnr_axis.set_xlabel('step')
    psnr_axis.set_ylabel('training PSNR (dB)')
    for axis in (loss_axis, psnr_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(report: RunReport, out_dir: Path) -> Path:
    """Write report.md (pictures linked relative to it), report.json and the curve plot; return the .md path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if report.curve:
        report.pictures['training curve'] = str(plot_curve(report.curve, out_dir / 'training_curve.png'))

    def link(path: str) -> str:
        try:
            return str(Path(path).resolve().relative_to(out_dir.resolve()))
        except ValueError:
            return path

    lines = [f'# {report.title}', '',
             f'- **Teacher:** `{report.teacher}` — {report.teacher_reason}',
             f'- **Source:** {report.source}',
             f'- **Keyframes:** {report.keyframes}; **training steps:** {report.steps}'
             + (f'; **held-out PSNR:** {report.heldout_psnr:.2f} dB' if report.heldout_psnr is not None else ''),
             '']
    lines += ['## Queries', '', '| query | answer | top cluster centroid (m, base frame) | relevancy | clusters | '
              'points | grasps (best width) | true centre | error | latency |',
              '|---|---|---|---|---|---|---|---|---|---|']
    for q in report.queries:
        def fmt(v):
            return '—' if v is None else '(' + ', '.join(f'{x:.3f}' for x in v) + ')'
        error = '—' if q.error_m is None else f'{q.error_m * 100:.1f} cm'
        latency = '—' if q.latency_s is None else f'{q.latency_s * 1000:.0f} ms'
        relevancy = '—' if q.top_relevancy is None else f'{q.top_relevancy:.2f}'
        grasps = f'{q.num_grasps}' + ('' if q.grasp_width_m is None else f' ({q.grasp_width_m * 100:.1f} cm)')
        lines.append(f'| `{q.text}` | {q.status} | {fmt(q.top_centroid)} | {relevancy} | {q.num_clusters} | '
                     f'{q.num_points} | {grasps} | {fmt(q.true_center)} | {error} | {latency} |')
    lines.append('')
    for q in report.queries:
        lines += [f'### `{q.text}`', '', f'Answer: **{q.status}** — {q.reason}', '',
                  f'![similarity overlay for {q.text}]({link(q.overlay_png)})', '',
                  f'Heatmap cloud: [{Path(q.ply).name}]({link(q.ply)})', '']
    if report.pictures:
        lines += ['## Pictures', '']
        for name, path in report.pictures.items():
            lines += [f'**{name}**', '', f'![{name}]({link(path)})', '']
    if report.timings:
        lines += ['## Timings', '', '| stage | seconds |', '|---|---|']
        lines += [f'| {stage} | {seconds:.1f} |' for stage, seconds in report.timings.items()]
        lines.append('')
    if report.notes:
        lines += ['## Notes', ''] + [f'- {note}' for note in report.notes] + ['']
    path = out_dir / 'report.md'
    path.write_text('\n'.join(lines))
    (out_dir / 'report.json').write_text(json.dumps(asdict(report), indent=1))
    return path
