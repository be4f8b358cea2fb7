"""Checkpoints on disk: the file format (written atomically, read safely) and the online session's newest one.

`atomic_torch_save` and `read_checkpoint` write and read the format (tensors through torch, everything else as one
JSON string; loading runs no code); `CheckpointError` / `CheckpointWriteError` say why one was refused or not
written. `CheckpointKeeper` owns ``checkpoint_dir/latest.ckpt``: it writes the trainer's state (atomically, through
`OnlineTrainer.save_checkpoint`), remembers a failed write and tries again `WRITE_RETRY_S` later, keeps a copy of the
state after a long step for a stop that cannot wait, reads the checkpoint to resume (setting aside one it refuses)
and moves an old one to ``previous.ckpt`` for a new scan.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import shutil
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

log = logging.getLogger(__name__)

# 2: metadata (config, teacher, step ...) as JSON beside the tensors, loaded with weights_only=True
CHECKPOINT_VERSION = 2
CHECKPOINT_TENSORS = ('model', 'optimizers', 'schedulers', 'grad_scaler')
CHECKPOINT_NAME = 'latest.ckpt'
# After a failed checkpoint write (e.g. disk full) the training loop tries again after this long.
WRITE_RETRY_S = 10.0
# A step at least this long (s) is followed by a copy of the state (model, optimisers) that a stop writes instead of
# waiting for the step in progress: F3RM's gpu sizes on two CPU cores took 12 s a step, and ``ros2 launch`` sends
# SIGTERM 5 s after SIGINT. Shorter steps (any GPU, the CPU presets) are waited for and copy nothing.
LONG_STEP_S = 1.0
# How long a stop waits for the checkpoint's locks once the training thread has not ended (s).
STOP_LOCK_WAIT_S = 0.5


class CheckpointError(ValueError):
    """A checkpoint refused: unreadable (truncated, corrupt), unsafe (Python objects) or of another format."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); no partial file is left behind."""


def _no_space(error: BaseException) -> bool:
    """Tell whether `error` (or what caused it) is 'no space left on device' / over quota."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return False


def _free_mb(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free / 1e6
    except OSError:
        return float('nan')


def atomic_torch_save(obj, path: Path) -> None:
    """Write `obj` to `path` through a temporary file: a failed write leaves the old file and no temporary."""
    tmp = path.with_name('.tmp-' + path.name)
    try:
        with open(tmp, 'wb') as handle:  # a file object: torch re-raises the OSError (errno) of a failed write
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        free = _free_mb(path.parent)
        tmp.unlink(missing_ok=True)
        if _no_space(error):
            raise CheckpointWriteError(f'disk full: no space left on the device of {path.parent} for the checkpoint '
                                       f'({free:.1f} MB free); nothing was written, the previous checkpoint is '
                                       'kept; free some space and the next save succeeds') from error
        raise CheckpointWriteError(f'could not write checkpoint {path}: {error} ({free:.1f} MB free there); the '
                                   'previous checkpoint is kept') from error


def plain_state(value):
    """Optimiser / scheduler state with numpy scalars made Python numbers (weights_only loads only plain types)."""
    if isinstance(value, dict):
        return type(value)((k, plain_state(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(plain_state(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def cloned_state(value):
    """Return a nested state with every tensor cloned (containers rebuilt, everything else shared)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return type(value)((k, cloned_state(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(cloned_state(v) for v in value)
    return value


def read_checkpoint(path: Path) -> Dict:
    """Load a checkpoint safely: tensors only (``torch.load(weights_only=True)``), metadata from JSON.

    Returns ``{'version', 'step', 'num_frames', 'capacity', 'config' (dict), 'teacher': {'name', 'state'},
    'scan_id', 'saved_at', 'model', 'optimizers', 'schedulers', 'grad_scaler'}``. Raises `CheckpointError`
    with the reason for a file that holds anything but tensors and plain data (no code ever runs while
    loading), a truncated or corrupt file, or another format.
    """
    path = Path(path)
    try:
        raw = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = next((line for line in lines if 'Unsupported' in line or 'GLOBAL' in line), lines[0] if lines else '')
        detail = detail.split(' was not an allowed global')[0].replace('WeightsUnpickler error: ', '')
        raise CheckpointError(f'{path} refused: it holds Python objects other than tensors and plain data, which '
                              f'f3rm_ros never writes (loaded with weights_only=True, nothing in it was run): '
                              f'{detail[:200]}') from error
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        size = path.stat().st_size if path.exists() else 0
        raise CheckpointError(f'{path} is not a readable checkpoint ({size} bytes; truncated or corrupt?): '
                              f'{(str(error).splitlines() or [type(error).__name__])[0][:200]}') from error
    if not isinstance(raw, dict):
        raise CheckpointError(f'{path} is not an f3rm_ros checkpoint (it holds a {type(raw).__name__})')
    if 'meta_json' in raw:
        try:
            meta = json.loads(raw['meta_json'])
        except (TypeError, ValueError) as error:
            raise CheckpointError(f'{path}: its metadata is not JSON: {error}') from error
    else:
        meta = {k: v for k, v in raw.items() if k not in CHECKPOINT_TENSORS}   # version 1: plain data
    if meta.get('version') not in (1, CHECKPOINT_VERSION):
        raise CheckpointError(f'{path}: checkpoint version {meta.get("version")!r} is not one this f3rm_ros reads '
                              f'(1..{CHECKPOINT_VERSION})')
    missing = [key for key in ('step', 'num_frames', 'capacity', 'config', 'teacher') if key not in meta] + [
        key for key in ('model',) if key not in raw]
    if missing:
        raise CheckpointError(f'{path}: not an f3rm_ros checkpoint (no {", ".join(missing)})')
    state = dict(meta)
    state.setdefault('scan_id', '')
    for key in CHECKPOINT_TENSORS:
        state[key] = raw.get(key, {})
    return state


class CheckpointKeeper:
    """The newest checkpoint of one online session (see the module docstring); no `checkpoint_dir`, no checkpoints.

    `saved_step` is the step of the newest checkpoint written or resumed (-1: none), `write_error` says why the last
    write failed (until one succeeds), `problem` why a checkpoint was refused at start-up (until the next good
    save). `on_saved(path)` is called, from the thread that saved, after every checkpoint.
    """

    def __init__(self, checkpoint_dir: str, on_saved: Optional[Callable[[Path], None]] = None):
        self.path: Optional[Path] = Path(checkpoint_dir).expanduser() / CHECKPOINT_NAME if checkpoint_dir else None
        self.on_saved = on_saved
        self.saved_step = -1
        self.write_error = ''
        self.problem = ''
        self._write_failed_at = 0.0
        self._between: Optional[Tuple[int, Dict]] = None   # (step, state) copied after the last long step
        self._lock = threading.Lock()   # one checkpoint write at a time (training thread, service, stop)

    def unsaved(self, trainer) -> bool:
        """Whether there is somewhere to save and `trainer` has stepped since the newest checkpoint."""
        return self.path is not None and trainer.step_count != self.saved_step

    def save(self, trainer, scan_id: str) -> Path:
        """Write the checkpoint; `CheckpointWriteError` (disk full ...) is remembered in `write_error` and raised."""
        path = self.path
        with self._lock:
            if trainer.step_count == self.saved_step and trainer.last_checkpoint == path and path.exists():
                return path  # another thread has just written this very step
            try:
                path = trainer.save_checkpoint(path, scan_id=scan_id)
            except CheckpointWriteError as error:
                self.write_error, self._write_failed_at = str(error), time.monotonic()
                log.error('checkpoint at step %d not written: %s', trainer.step_count, error)
                raise
            if self.write_error:
                log.info('checkpoint written again (step %d): %s', trainer.step_count, path)
            self.write_error = self.problem = ''
            self.saved_step = trainer.step_count
        self._tell(path)
        return path

    def try_save(self, trainer, scan_id: str) -> bool:
        """`save` for the training loop: a failed write is reported and retried later, never fatal.

        After a failure the next attempt waits `WRITE_RETRY_S` (a full disk is not asked every step).
        """
        if self.write_error and time.monotonic() - self._write_failed_at < WRITE_RETRY_S:
            return False
        try:
            self.save(trainer, scan_id)
            return True
        except CheckpointWriteError:
            return False

    def after_step(self, trainer, scan_id: str, step_s: float) -> None:
        """Copy the state after a step of `step_s` seconds if it was long: a stop writes it rather than wait."""
        if self.path is not None and step_s >= LONG_STEP_S:
            self._between = (trainer.step_count, trainer.checkpoint_state(scan_id, copy=True))

    def save_without_waiting(self, trainer, scan_id: str, wait_s: float = STOP_LOCK_WAIT_S) -> Optional[Path]:
        """Write a consistent checkpoint while the training thread may be inside a long step; returns the path.

        The locks are waited for at most `wait_s` each (in the training thread's order: writes, then the model).
        Between steps the state now is written; during a step, the copy kept after the last long step
        (`LONG_STEP_S`), if it is newer than the checkpoint on disk; otherwise nothing (None).
        """
        path = self.path
        if trainer is None or path is None:
            return None
        if not self._lock.acquire(timeout=wait_s):
            log.warning('a checkpoint write is in progress; the last checkpoint is the one it writes')
            return None
        try:
            if trainer.lock.acquire(timeout=wait_s):
                try:
                    if trainer.step_count == self.saved_step:
                        return path
                    step, state = trainer.step_count, trainer.checkpoint_state(scan_id)
                    path = trainer.save_checkpoint(path, state=state)
                finally:
                    trainer.lock.release()
            elif self._between is not None and self._between[0] > self.saved_step:
                step, state = self._between
                path = trainer.save_checkpoint(path, state=state)
                log.info('a step was still in progress: wrote the state after step %d', step)
            else:
                log.warning('a step is still in progress and no state between steps is newer; the checkpoint of '
                            'step %d stands', self.saved_step)
                return None
            self.saved_step = step
        except CheckpointWriteError as error:
            self.write_error, self._write_failed_at = str(error), time.monotonic()
            raise
        finally:
            self._lock.release()
        self._tell(path)
        return path

    def _tell(self, path: Path) -> None:
        if self.on_saved is not None:
            try:
                self.on_saved(path)
            except Exception:  # a listener must not stop training, nor a stop
                log.exception('checkpoint listener failed')

    def read_for_resume(self, scan_id: str) -> Optional[Dict[str, Any]]:
        """Return the checkpoint to resume (`read_checkpoint`) or None; a refused one is set aside with the reason.

        Refused: unreadable (truncated, corrupt), unsafe (objects other than tensors: never run) or of another
        scan than `scan_id`. It is renamed ``latest.ckpt.refused`` (so the next save does not destroy the evidence
        and no later start-up trips over it), `problem` says why, and training starts from scratch on the scan's
        keyframes.
        """
        path = self.path
        if path is None or not path.exists():
            return None
        try:
            checkpoint = read_checkpoint(path)
        except CheckpointError as error:
            problem = str(error)
        else:
            stored_scan = checkpoint.get('scan_id', '')
            if not (stored_scan and scan_id and stored_scan != scan_id):
                return checkpoint
            problem = f'{path} belongs to scan {stored_scan}, not to the scan being resumed ({scan_id})'
        refused = path.with_name(path.name + '.refused')
        try:
            path.replace(refused)
            where = f'moved to {refused.name}'
        except OSError as error:
            where = f'could not be moved aside: {error}'
        self.problem = f'checkpoint refused: {problem} ({where}); training from scratch'
        log.error('%s', self.problem)
        return None

    def set_aside(self) -> Optional[Path]:
        """Keep the checkpoint of a scan that ends as ``previous.ckpt`` (a new scan's first save would overwrite it)."""
        if self.path is None or not self.path.exists():
            return None
        previous = self.path.with_name('previous.ckpt')
        self.path.replace(previous)
        return previous

    def forget(self) -> None:
        """Start a new scan: nothing saved of it yet, no state kept between steps, no refusal to report."""
        self.saved_step = -1
        self._between = None
        self.problem = ''
