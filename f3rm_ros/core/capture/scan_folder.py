"""The capture session's scan on disk: a nerfstudio dataset that every kept keyframe is appended to.

A keyframe is written (``transforms.json`` replaced atomically, images first) before it is reported, so a crash
never loses a keyframe that any reader saw; a failed write (disk full) leaves no partial entry and is remembered
in `write_error` until a write succeeds. A folder that already holds a scan is continued with ``resume``, else
emptied; the scan id and the label names are stored in ``transforms.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional

from .frames import DatasetWriter, PosedFrame


class ScanFolder:
    """One scan's dataset folder: continued or emptied when opened, appended to, emptied for a new scan."""

    def __init__(self, root: Path, base_frame: str, workspace: Optional[Dict], resume: bool):
        metadata = {'base_frame': base_frame}
        if workspace:
            metadata['workspace'] = workspace
        existing = (root / 'transforms.json').exists()
        self.writer = DatasetWriter(root, base_frame=base_frame, metadata=metadata)
        if existing and not resume:
            self.writer.clear()
        self.write_error = ''          # the last write failed (until one succeeds)

    @property
    def root(self) -> Path:
        """The dataset folder."""
        return self.writer.root

    @property
    def frames(self) -> List[Dict]:
        """The entries of ``transforms.json`` (a continued scan's keyframes)."""
        return self.writer.meta['frames']

    def adopt_scan_id(self, fresh_id: str) -> str:
        """Return the scan id: a continued scan's own, else `fresh_id`, which is then stored."""
        scan_id = str(self.writer.meta.get('scan_id') or fresh_id) if self.frames else fresh_id
        if self.writer.meta.get('scan_id') != scan_id:
            self.writer.meta['scan_id'] = scan_id
            self.writer.flush()
        return scan_id

    def label_names(self) -> Dict[int, str]:
        """Object id -> name stored with the scan ({} when none)."""
        labels = self.writer.meta.get('labels')
        if isinstance(labels, dict):
            return {int(k): str(v) for k, v in labels.items()}
        return {}

    def store_label_names(self, names: Mapping[int, str]) -> None:
        """Store object id -> name in ``transforms.json``."""
        self.writer.meta['labels'] = {str(k): v for k, v in sorted(names.items())}
        self.writer.flush()

    def append(self, frame: PosedFrame) -> str:
        """Write a keyframe; return 'writing keyframes works again' after a failed write, else ''.

        OSError (disk full, ...) is raised after `write_error` is set; nothing of the frame is left in the dataset.
        """
        try:
            self.writer.append(frame)
        except OSError as error:
            self.write_error = f'could not write the keyframe: {error}'
            raise
        if self.write_error:
            self.write_error = ''
            return 'writing keyframes works again'
        return ''

    def clear(self, scan_id: str) -> str:
        """Empty the dataset for a new scan `scan_id`; return a note when the folder could not be updated."""
        self.writer.meta['scan_id'] = scan_id
        try:
            self.writer.clear()
        except OSError as error:  # e.g. disk full: the scan on disk is stale until a keyframe is written
            self.write_error = str(error)
            return f' (the dataset on disk could not be updated: {error})'
        return ''
