"""How the nodes find each other: relative input names, remapped to the outputs of the named node.

The capture node publishes ``~/keyframe/{image,camera_info,pose,depth,labels,mask,label_names,scan}``; the trainer
subscribes to the relative ``keyframe/...`` names; the trainer publishes ``~/checkpoint`` and ``~/maturity``; the
query node subscribes to the relative ``checkpoint`` and ``maturity``. Whoever starts them says which capture
feeds which trainer with remaps (``keyframe/image:=capture/keyframe/image`` ...): the launch files, ``f3rm-ros
pipeline`` and the tests use these functions or the same literal rules, so renaming a node in one place renames
both ends. A trainer or query node left unconnected says so on ``/diagnostics``.
"""
from __future__ import annotations

from typing import List, Tuple

KEYFRAME_PARTS = ('image', 'camera_info', 'pose', 'depth', 'labels', 'mask', 'label_names', 'scan')


def trainer_remaps(capture: str = 'capture') -> List[Tuple[str, str]]:
    """(from, to) remaps that connect a trainer to the capture node named `capture` (same namespace)."""
    return [(f'keyframe/{part}', f'{capture}/keyframe/{part}') for part in KEYFRAME_PARTS]


def query_remaps(trainer: str = 'trainer') -> List[Tuple[str, str]]:
    """(from, to) remaps: a query node follows the checkpoints, maturity and scene changes of the trainer `trainer`."""
    return [('checkpoint', f'{trainer}/checkpoint'), ('maturity', f'{trainer}/maturity'),
            ('scene_changes', f'{trainer}/scene_changes')]


def remap_arguments(remaps: List[Tuple[str, str]]) -> List[str]:
    """``-r from:=to`` command-line arguments (after ``--ros-args``) for `remaps`."""
    arguments: List[str] = []
    for source, target in remaps:
        arguments += ['-r', f'{source}:={target}']
    return arguments
