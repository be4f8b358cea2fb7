"""Benchmarks behind ``f3rm-ros bench``: one module per kind (train, hashgrid, query, semantic).

A module exposes ``register(subparsers)`` and is listed in `f3rm_ros.commands.bench.BENCH_MODULES`. This
package holds what they share: device description, a GPU-synchronised clock, baseline runs and tables.
Keep heavy imports (torch, nerfstudio) inside functions so that ``f3rm-ros --help`` stays fast.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence


def device_name() -> str:
    """'NVIDIA H100 80GB HBM3 (torch 2.11.0, CUDA 13.0)' or 'cpu (torch ...)'."""
    import torch
    if torch.cuda.is_available():
        return f'{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})'
    return f'cpu (torch {torch.__version__})'


def sync() -> None:
    """Wait for the GPU (no-op on the CPU) so that a host clock reads finished work."""
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Stopwatch:
    """Accumulates synchronised wall time over `running()` spans; `elapsed` includes the open span."""

    def __init__(self):
        self.total = 0.0
        self._since: Optional[float] = None

    def start(self) -> None:
        """Open a span (synchronises first)."""
        sync()
        self._since = time.perf_counter()

    def stop(self) -> float:
        """Close the span (synchronises first); returns the total."""
        sync()
        if self._since is not None:
            self.total += time.perf_counter() - self._since
            self._since = None
        return self.total

    @property
    def elapsed(self) -> float:
        """Total seconds, the open span included (synchronises)."""
        if self._since is None:
            return self.total
        sync()
        return self.total + time.perf_counter() - self._since


RESULT_FIELDS = re.compile(r'(\w+)=([^\s]+)')


def parse_result_line(text: str) -> Optional[Dict[str, str]]:
    """Parse the ``RESULT key=value ...`` line of a baseline's output into a dict (last one wins), or None."""
    found = None
    for line in text.splitlines():
        if line.startswith('RESULT '):
            found = dict(RESULT_FIELDS.findall(line))
    return found


EVAL_LINE = re.compile(r'^EVAL step=(\d+) train_s=([-+0-9.eE]+) psnr=([-+0-9.eEnaif]+)', re.MULTILINE)


def parse_eval_lines(text: str) -> List[Dict[str, float]]:
    """Parse a baseline's ``EVAL step=.. train_s=.. psnr=..`` lines into [{'step', 'train_s', 'psnr'}] by step."""
    rows = {int(m.group(1)): {'step': int(m.group(1)), 'train_s': float(m.group(2)), 'psnr': float(m.group(3))}
            for m in EVAL_LINE.finditer(text)}
    return [rows[step] for step in sorted(rows)]


def number(value: Optional[str]) -> float:
    """Leading float of '41.7k'/'206.0s'/'5.7GiB'-like strings ('k' multiplies by 1000); nan if absent."""
    if value is None:
        return float('nan')
    match = re.match(r'[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?', value)
    if not match:
        return float('nan')
    scale = 1000.0 if value[match.end():].startswith('k') else 1.0
    return float(match.group(0)) * scale


def run_baseline(command: Sequence[str], log_path: Optional[Path] = None, echo: bool = True,
                 env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Run a baseline command (a subprocess on the same GPU, before ours) and parse its RESULT line.

    The result holds the RESULT fields, ``process_wall_s`` and ``output`` (all it printed: EVAL lines ...).
    """
    print(f'[bench] baseline: {" ".join(shlex.quote(c) for c in command)}', flush=True)
    env = dict(os.environ, **(env or {}), PYTHONUNBUFFERED='1', HF_HUB_OFFLINE='1')
    started = time.perf_counter()
    done = subprocess.run(list(command), capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    if log_path is not None:
        Path(log_path).write_text(output)
    result = parse_result_line(output)
    if done.returncode != 0 or result is None:
        tail = '\n'.join(output.splitlines()[-30:])
        raise RuntimeError(f'baseline failed (exit {done.returncode}):\n{tail}')
    if echo:
        print(f'[bench] baseline finished in {seconds:.0f} s: '
              + ' '.join(f'{k}={v}' for k, v in result.items()), flush=True)
        curve = parse_eval_lines(output)
        if curve:
            print('[bench] baseline held-out PSNR: ' + ', '.join(
                f'{r["psnr"]:.2f} @ {r["step"]} ({r["train_s"]:.1f} s)' for r in curve), flush=True)
    result['process_wall_s'] = f'{seconds:.1f}'
    result['output'] = output
    return result


def format_table(rows: List[Sequence[str]]) -> str:
    """Rows of cells (first row = header) as a GitHub-style markdown table."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]

    def line(row):
        return '| ' + ' | '.join(str(c).ljust(w) for c, w in zip(row, widths)) + ' |'
    out = [line(rows[0]), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
    out.extend(line(r) for r in rows[1:])
    return '\n'.join(out)


def write_json(path: Optional[str], data: Dict) -> None:
    """Write `data` as JSON to `path` (if given), creating folders."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1, default=str))


def python() -> str:
    """Return the interpreter running us (baselines run with the same one)."""
    return sys.executable
