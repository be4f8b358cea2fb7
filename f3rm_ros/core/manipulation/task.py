"""Tasks taught by demonstration: what a person showed, kept as a file a person can read.

A task is a name, a description (the text that retrieves it), whether it is a grasp or a placement, the
gripper it was taught with, its query points (count, sigma, seed: drawn again from them and checked against
the stored copy), and its demonstrations: the gripper pose in ``base_frame`` each time, where it came from
(TF or a given pose, the checkpoint and training step of the field it was read from) and the embedding read
there. The task's embedding is the mean of its demonstrations' embeddings (F3RM).

On disk, in a tasks directory: ``<slug>.yaml`` (everything but numbers in bulk) and ``<slug>.npz`` (the query
points and each demonstration's [N, D] embedding). The YAML carries the format version and the npz's SHA-256,
so a file from another version, a truncated npz, or one edited by hand is refused with the reason instead of
giving poses from garbage.
"""
from __future__ import annotations

import datetime
import hashlib
import io
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence

import numpy as np
import yaml
from scipy.spatial.transform import Rotation

from .gripper import GripperGeometry
from .shape import LocalShape, agreed_axis

FORMAT = 'f3rm_ros.task/1'
TaskKind = Literal['grasp', 'place']
TASK_KINDS = ('grasp', 'place')


class TaskFileError(ValueError):
    """A task file that cannot be used, with the reason (missing, corrupt, another version or gripper)."""


def query_points(count: int, sigma: float, seed: int) -> np.ndarray:
    """[count, 3] float32 points in the gripper frame from an isotropic Gaussian (a pure function of its arguments)."""
    return np.random.default_rng(seed).normal(0.0, sigma, size=(count, 3)).astype(np.float32)


def pose_to_dict(pose: np.ndarray) -> Dict[str, List[float]]:
    """Return a 4 x 4 pose as {'xyz': [...], 'quat_xyzw': [...]} (what the YAML shows)."""
    return {'xyz': [round(float(v), 6) for v in pose[:3, 3]],
            'quat_xyzw': [round(float(v), 8) for v in Rotation.from_matrix(pose[:3, :3]).as_quat()]}


def pose_from_dict(data: Dict) -> np.ndarray:
    """Inverse of `pose_to_dict`; ValueError for a malformed entry."""
    xyz, quat = np.asarray(data['xyz'], float), np.asarray(data['quat_xyzw'], float)
    if xyz.shape != (3,) or quat.shape != (4,) or not np.all(np.isfinite(xyz)) or not np.all(np.isfinite(quat)):
        raise ValueError(f'a pose needs xyz (3 numbers) and quat_xyzw (4 numbers), got {data}')
    if abs(np.linalg.norm(quat) - 1.0) > 1e-3:
        raise ValueError(f'quat_xyzw {quat.tolist()} is not a unit quaternion')
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = Rotation.from_quat(quat).as_matrix(), xyz
    return pose


@dataclass
class Demonstration:
    """One demonstration: the gripper pose (base_frame) and the embedding read there."""

    pose: np.ndarray                 # 4 x 4, base_frame <- gripper
    embedding: np.ndarray            # [N, D] float32
    touched: int = 0                 # occupied voxels the gripper touched there (a grasp close to the table does)
    tip_clearance: Optional[float] = None  # m from the lowest finger point down to the support under the fingers
    shape: Optional[LocalShape] = None     # the long axis of the occupied voxels around the fingertips (`shape`)
    source: str = 'pose'             # 'tf' (base_frame <- grasp_frame at the request time) | 'pose' (given)
    checkpoint: str = ''             # the field it was read from
    step: int = -1                   # that field's training step
    recorded: str = ''               # ISO time


@dataclass
class Task:
    """A grasp or placement taught by demonstrations (see the module docstring)."""

    name: str
    description: str
    kind: TaskKind
    gripper: GripperGeometry
    width: float                     # opening (m) the gripper had at the demonstrations
    num_points: int
    sigma: float
    seed: int
    teacher: str                     # the teacher of the field the demonstrations were read from
    base_frame: str = 'base_link'
    demos: List[Demonstration] = field(default_factory=list)

    @property
    def points(self) -> np.ndarray:
        """Query points [N, 3] in the gripper frame."""
        return query_points(self.num_points, self.sigma, self.seed)

    @property
    def embedding(self) -> np.ndarray:
        """[N, D] mean of the demonstrations' embeddings; ValueError for a task without demonstrations."""
        if not self.demos:
            raise ValueError(f'task {self.name!r} has no demonstrations yet')
        return np.mean([demo.embedding for demo in self.demos], axis=0).astype(np.float32)

    @property
    def tip_clearance(self) -> Optional[float]:
        """Return how close (m) the demonstrations brought the fingers to the support under them (the lowest).

        None when no demonstration had a support under its fingers (a placement high above the table).
        """
        measured = [demo.tip_clearance for demo in self.demos if demo.tip_clearance is not None]
        return min(measured) if measured else None

    @property
    def shape_axis(self) -> Optional[np.ndarray]:
        """The demonstrations' common local axis [3] in the gripper frame (`shape.agreed_axis`), or None."""
        return agreed_axis([demo.shape for demo in self.demos])

    @property
    def touched(self) -> int:
        """Occupied voxels the gripper touched at the demonstrations (the most): answers may touch as many."""
        return max((demo.touched for demo in self.demos), default=0)

    @property
    def approach(self) -> Optional[np.ndarray]:
        """Unit mean approach axis (gripper z) of the demonstrations in base_frame, or None.

        None without demonstrations or when they disagree (approaches more than 120 degrees apart average to less
        than half a unit).
        """
        if not self.demos:
            return None
        mean = np.mean([np.asarray(demo.pose)[:3, 2] for demo in self.demos], axis=0)
        norm = float(np.linalg.norm(mean))
        return mean / norm if norm >= 0.5 else None

    @property
    def feature_dim(self) -> Optional[int]:
        """D of its embeddings (None before the first demonstration)."""
        return int(self.demos[0].embedding.shape[1]) if self.demos else None

    def summary(self) -> str:
        """Return a few lines a person reads: what was recorded."""
        lines = [f'task {self.name!r} ({self.kind}): {self.description!r}',
                 f'  gripper {self.gripper.name} at {self.width * 100:.1f} cm, {self.num_points} query points '
                 f'(sigma {self.sigma * 1000:.1f} mm, seed {self.seed}), teacher {self.teacher}, '
                 f'frame {self.base_frame}']
        for index, demo in enumerate(self.demos):
            p = pose_to_dict(demo.pose)
            lines.append(f'  demo {index}: xyz {p["xyz"]} quat_xyzw {[round(q, 4) for q in p["quat_xyzw"]]} from '
                         f'{demo.source}, checkpoint {demo.checkpoint or "-"} step {demo.step}, {demo.recorded}')
        return '\n'.join(lines)


def slug(name: str) -> str:
    """File stem for a task name: lowercase words joined by '_' ('Mug handle' -> 'mug_handle')."""
    stem = re.sub(r'[^a-z0-9]+', '_', name.strip().lower()).strip('_')
    if not stem:
        raise ValueError(f'a task name needs a letter or digit, got {name!r}')
    return stem


class TaskLibrary:
    """The tasks of a directory: list, load, record a demonstration, forget one (writes are atomic)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory).expanduser()

    def paths(self, name: str):
        """(yaml, npz) paths of a task name."""
        stem = slug(name)
        return self.directory / f'{stem}.yaml', self.directory / f'{stem}.npz'

    def names(self) -> List[str]:
        """Names of the tasks on disk (sorted; unreadable files skipped: `load` says why)."""
        names = []
        for path in sorted(self.directory.glob('*.yaml')):
            try:
                names.append(str(yaml.safe_load(path.read_text())['name']))
            except (OSError, yaml.YAMLError, KeyError, TypeError):
                continue
        return names

    def load_all(self) -> List[Task]:
        """Every task that loads (the others are left out; `problems` lists why)."""
        tasks = []
        for name in self.names():
            try:
                tasks.append(self.load(name))
            except TaskFileError:
                continue
        return tasks

    def problems(self) -> Dict[str, str]:
        """{file name: reason} of task files that do not load."""
        out = {}
        for path in sorted(self.directory.glob('*.yaml')):
            try:
                read_task(path)
            except TaskFileError as error:
                out[path.name] = str(error)
        return out

    def exists(self, name: str) -> bool:
        """Whether a task of this name is on disk."""
        return self.paths(name)[0].is_file()

    def load(self, name: str) -> Task:
        """Return the task `name`; TaskFileError with the reason when it is missing or unusable."""
        path = self.paths(name)[0]
        if not path.is_file():
            raise TaskFileError(f'no task {name!r} in {self.directory} (tasks: {self.names() or "none"})')
        return read_task(path)

    def record(self, task: Task, demo: Demonstration) -> Task:
        """Append `demo` to the task (created from `task` when new; its settings must match a stored one)."""
        if self.exists(task.name):
            stored = self.load(task.name)
            check_compatible(stored, task.gripper, task.teacher, demo.embedding.shape[1])
            if (stored.num_points, stored.sigma, stored.seed) != (task.num_points, task.sigma, task.seed):
                raise TaskFileError(f'task {task.name!r} was taught with {stored.num_points} query points, sigma '
                                    f'{stored.sigma}, seed {stored.seed}; these settings differ')
            task = stored
        task.demos.append(demo)
        write_task(task, self.directory)
        return task

    def forget(self, name: str, index: int) -> Task:
        """Drop demonstration `index` (negative counts from the end); the task file goes with its last one."""
        task = self.load(name)
        if not -len(task.demos) <= index < len(task.demos):
            raise IndexError(f'task {name!r} has {len(task.demos)} demonstration(s); no index {index}')
        del task.demos[index]
        if task.demos:
            write_task(task, self.directory)
        else:
            for path in self.paths(name):
                path.unlink(missing_ok=True)
        return task


def check_compatible(task: Task, gripper: GripperGeometry, teacher: str, feature_dim: Optional[int]) -> None:
    """Raise TaskFileError unless the task can be used with this gripper, teacher and feature width."""
    if task.gripper != gripper:
        raise TaskFileError(f'task {task.name!r} was taught with gripper {task.gripper.name} '
                            f'({_gripper_line(task.gripper)}); this one is {gripper.name} ({_gripper_line(gripper)}): '
                            'record its demonstrations again with this gripper')
    if task.teacher != teacher:
        raise TaskFileError(f'task {task.name!r} was taught on a field of the {task.teacher!r} teacher; this field has '
                            f'{teacher!r}: its features are not comparable')
    if feature_dim is not None and task.feature_dim not in (None, feature_dim):
        raise TaskFileError(f'task {task.name!r} has {task.feature_dim}-d embeddings; this field has {feature_dim}-d '
                            'features')


def _gripper_line(g: GripperGeometry) -> str:
    return (f'opening {g.max_opening}, fingers {g.finger_length} x {g.finger_width} x {g.finger_depth}, '
            f'palm {list(g.palm_size)}')


def write_task(task: Task, directory: Path) -> Path:
    """Write `<slug>.npz` then `<slug>.yaml` atomically (a reader never sees a YAML without its npz)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = slug(task.name)
    buffer = io.BytesIO()
    np.savez(buffer, points=task.points, embeddings=np.stack([d.embedding for d in task.demos]).astype(np.float32))
    blob = buffer.getvalue()
    npz, text = directory / f'{stem}.npz', directory / f'{stem}.yaml'
    _atomic_write(npz, blob)
    data = {
        'format': FORMAT, 'name': task.name, 'description': task.description, 'kind': task.kind,
        'base_frame': task.base_frame, 'teacher': task.teacher, 'width': round(float(task.width), 6),
        'gripper': {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(task.gripper).items()},
        'query_points': {'count': task.num_points, 'sigma': task.sigma, 'seed': task.seed},
        'embedding_file': npz.name, 'embedding_sha256': hashlib.sha256(blob).hexdigest(),
        'demos': [{'pose': pose_to_dict(d.pose), 'touched': int(d.touched),
                   'tip_clearance': None if d.tip_clearance is None else round(float(d.tip_clearance), 6),
                   'shape': None if d.shape is None else {'axis': [round(float(v), 6) for v in d.shape.axis],
                                                          'elongation': round(float(d.shape.elongation), 4)},
                   'source': d.source, 'checkpoint': d.checkpoint, 'step': int(d.step), 'recorded': d.recorded}
                  for d in task.demos],
    }
    _atomic_write(text, yaml.safe_dump(data, sort_keys=False).encode())
    return text


def read_task(path: Path) -> Task:
    """Read a task YAML and its npz; TaskFileError with the reason for anything unusable."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise TaskFileError(f'{path}: not readable YAML ({error})') from error
    if not isinstance(data, dict) or data.get('format') != FORMAT:
        found = data.get('format') if isinstance(data, dict) else type(data).__name__
        raise TaskFileError(f'{path}: format {found!r}, this version reads {FORMAT!r}')
    try:
        npz = path.parent / data['embedding_file']
        blob = npz.read_bytes()
        if hashlib.sha256(blob).hexdigest() != data['embedding_sha256']:
            raise TaskFileError(f'{npz}: its SHA-256 differs from the one {path.name} recorded (changed or truncated)')
        arrays = np.load(io.BytesIO(blob))
        q = data['query_points']
        gripper = data['gripper']
        task = Task(name=str(data['name']), description=str(data['description']), kind=data['kind'],
                    gripper=GripperGeometry(**{**gripper, 'palm_size': tuple(gripper['palm_size'])}),
                    width=float(data['width']), num_points=int(q['count']), sigma=float(q['sigma']),
                    seed=int(q['seed']), teacher=str(data['teacher']), base_frame=str(data['base_frame']))
        embeddings = arrays['embeddings']
        demos = data['demos']
        if embeddings.ndim != 3 or len(embeddings) != len(demos) or embeddings.shape[1] != task.num_points:
            raise TaskFileError(f'{npz}: embeddings {embeddings.shape} do not match {len(demos)} demonstration(s) '
                                f'of {task.num_points} points')
        if not np.array_equal(arrays['points'], task.points):
            raise TaskFileError(f'{npz}: the stored query points differ from the ones count/sigma/seed give')
        if task.kind not in TASK_KINDS:
            raise TaskFileError(f'{path}: kind must be one of {TASK_KINDS}, got {task.kind!r}')
        task.demos = [Demonstration(pose=pose_from_dict(d['pose']), embedding=embeddings[i], touched=int(d['touched']),
                                    tip_clearance=optional_float(d.get('tip_clearance')),
                                    shape=shape_from_dict(d.get('shape')), source=str(d['source']),
                                    checkpoint=str(d['checkpoint']), step=int(d['step']), recorded=str(d['recorded']))
                      for i, d in enumerate(demos)]
    except TaskFileError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as error:
        raise TaskFileError(f'{path}: {type(error).__name__}: {error}') from error
    return task


def optional_float(value) -> Optional[float]:
    """Return a task file's optional number as a float; None stays None (older files have none)."""
    return None if value is None else float(value)


def shape_from_dict(value) -> Optional[LocalShape]:
    """Return a task file's optional local shape ({axis, elongation}); None stays None (older files have none)."""
    if value is None:
        return None
    axis = np.asarray(value['axis'], dtype=np.float64)
    if axis.shape != (3,) or not np.isfinite(axis).all() or abs(np.linalg.norm(axis) - 1.0) > 1e-3:
        raise ValueError(f'shape axis {value["axis"]!r} is not a unit 3-vector')
    return LocalShape(axis, float(value['elongation']))


def now_iso() -> str:
    """Return the current UTC time, ISO 8601 to the second (a demonstration's `recorded`)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + '.tmp')
    temporary.write_bytes(data)
    temporary.replace(path)


def choose_task(tasks: Sequence[Task], text_embeddings, text: str, task_name: str, min_similarity: float):
    """(task or None, reason): `task_name` by name, else the task whose description is most like `text`.

    `text_embeddings(list of texts) -> [K, D]` unit rows (the teacher's text encoder).
    """
    if task_name:
        for task in tasks:
            if slug(task.name) == slug(task_name):
                return task, f'task {task.name!r} by name'
        return None, f'no task named {task_name!r} (tasks: {[t.name for t in tasks] or "none"})'
    if not text.strip():
        return None, 'give a text or a task name'
    usable = [task for task in tasks if task.demos]
    if not usable:
        return None, 'no task has a demonstration yet (record some with ~/record_demo or `f3rm-ros task record`)'
    for task in usable:
        if slug(task.name) == slug(text):
            return task, f'task {task.name!r}: its name is the text'
    vectors = np.asarray(text_embeddings([text] + [task.description for task in usable]), dtype=np.float64)
    similarity = vectors[1:] @ vectors[0]
    best = int(np.argmax(similarity))
    ranked = ', '.join(f'{t.name!r} {s:.2f}' for t, s in sorted(zip(usable, similarity), key=lambda p: -p[1])[:3])
    if similarity[best] < min_similarity:
        return None, (f'no task is like {text!r}: best {ranked} (below manipulation.task_min_similarity '
                      f'{min_similarity})')
    return usable[best], f'task {usable[best].name!r}: its description is the most like {text!r} ({ranked})'
