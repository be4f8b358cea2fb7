"""Shared plumbing of the f3rm_ros nodes: parameters, QoS, status, throttled problems, aligned images.

Every node declares its parameters from a static table (`ParamSpec`), so tools and tests can list what a
node accepts without starting ROS (`declared_names`). Parameters are declared with defaults and
descriptions and validated whenever they are set at run time: a bad value is rejected with a reason, and a
parameter that only takes effect at start-up says so instead of silently doing nothing.

The F3RM configuration (`core.config.F3RMConfig`) is declared as dotted parameters (``trainer.steps``,
``query.negatives`` ...) on top of the ``preset`` parameter, so one YAML file (``/**: ros__parameters:``)
configures the launch file, the one-process pipeline and the CLI alike.
"""
from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ..core.config import PRESETS, F3RMConfig, flatten, make_config, unflatten
from . import conversions
from .dds import confine_dds_to_localhost

Validator = Callable[[Any], Optional[str]]


# ------------------------------------------------------------------------------------------------ startup

def init_ros(args: Optional[Sequence[str]] = None, context=None) -> None:
    """``rclpy.init`` after confining DDS to this machine (DESIGN.md §6); every entry point calls this."""
    import rclpy
    confine_dds_to_localhost()
    rclpy.init(args=list(args) if args is not None else None, context=context)


def spin_nodes(nodes: Sequence[Any], threads: Optional[int] = None, context=None) -> None:
    """Spin `nodes` until shutdown (Ctrl-C, SIGTERM); then destroy them.

    One node spins on a single-threaded executor (its heavy work has threads of its own, and rclpy's
    multi-threaded executor costs more per callback); several share a multi-threaded one.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
    if len(nodes) == 1 and not threads:
        executor = SingleThreadedExecutor(context=context)
    else:
        executor = MultiThreadedExecutor(num_threads=threads, context=context)
    for node in nodes:
        executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in nodes:
            try:
                node.destroy_node()
            except Exception as error:  # shutting down: report, keep destroying the others
                print(f'[f3rm_ros] error while stopping {node.get_name()}: {error}', file=sys.stderr)
        executor.shutdown()
        if rclpy.ok(context=context):
            rclpy.try_shutdown(context=context)


def node_main(factory: Callable[[], Any], args: Optional[Sequence[str]] = None, threads: Optional[int] = None) -> int:
    """Entry point body of a ``*_node`` executable: init ROS, build the node, spin it (`threads`: see spin_nodes)."""
    init_ros(args if args is not None else sys.argv)
    try:
        node = factory()
    except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
        print(f'[f3rm_ros] cannot start: {error}', file=sys.stderr)
        import rclpy
        rclpy.try_shutdown()
        return 2
    spin_nodes([node], threads)
    return 0


def packaged_file(relative: str) -> Path:
    """Find a file shipped in the package's share folder (``config/f3rm.yaml``, ``config/f3rm.rviz``)."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory('f3rm_ros')) / relative)
    except Exception:  # not an ament install
        pass
    root = Path(__file__).resolve().parents[2]
    candidates.append(root / relative)                                         # source checkout
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix]):
        candidates.append(Path(prefix) / 'share' / 'f3rm_ros' / relative)      # pip install
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f'{relative} not found; looked in: ' + ', '.join(map(str, candidates)))


# ------------------------------------------------------------------------------------------------ QoS

QOS_CHOICES = ('reliable', 'best_effort', 'sensor_data', 'latched')


def make_qos(name: str, depth: int = 10) -> QoSProfile:
    """Return the QoS named: reliable | best_effort | sensor_data (best effort, depth 5) | latched.

    latched = reliable + transient local.
    """
    if name not in QOS_CHOICES:
        raise ValueError(f'QoS must be one of {QOS_CHOICES}, got {name!r}')
    if name == 'sensor_data':
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.BEST_EFFORT,
                          durability=DurabilityPolicy.VOLATILE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=(ReliabilityPolicy.BEST_EFFORT if name == 'best_effort'
                                   else ReliabilityPolicy.RELIABLE),
                      durability=(DurabilityPolicy.TRANSIENT_LOCAL if name == 'latched'
                                  else DurabilityPolicy.VOLATILE))


def latched_qos(depth: int = 1) -> QoSProfile:
    """Reliable + transient local: late subscribers get the newest `depth` messages (maps, paths)."""
    return make_qos('latched', depth)


# ------------------------------------------------------------------------------------------------ parameters

@dataclass
class ParamSpec:
    """One node parameter: default, description, whether it may change at run time, and a validator."""

    name: str
    default: Any
    description: str
    runtime: bool = False
    validator: Optional[Validator] = None


def non_negative(value: Any) -> Optional[str]:
    """Check for a finite number >= 0 (a validator)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return f'must be a finite number >= 0, got {value!r}'
    return None


def positive(value: Any) -> Optional[str]:
    """Check for a finite number > 0 (a validator)."""
    problem = non_negative(value)
    return problem or (None if value > 0 else f'must be > 0, got {value!r}')


def one_of(*choices: str) -> Validator:
    """Return a validator accepting only `choices`."""
    def check(value: Any) -> Optional[str]:
        return None if value in choices else f'must be one of {list(choices)}, got {value!r}'
    return check


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    text = spec.description + ('' if spec.runtime else ' (read at start-up)')
    return ParameterDescriptor(description=text, dynamic_typing=True)


CONFIG_SECTIONS = tuple(name for name in F3RMConfig.__dataclass_fields__)


def config_specs(preset: str = 'gpu', sections: Iterable[str] = CONFIG_SECTIONS,
                 runtime_sections: Iterable[str] = ()) -> List[ParamSpec]:
    """`ParamSpec` for each config field of `sections` (dotted names), defaults from `preset`."""
    sections, runtime_sections = set(sections), set(runtime_sections)
    specs = []
    for name, value in flatten(make_config(preset)):
        section = name.split('.')[0]
        if section in sections:
            default = list(value) if isinstance(value, tuple) else value
            specs.append(ParamSpec(name, default, f'F3RM config {name} (see core/config.py)',
                                   runtime=section in runtime_sections))
    return specs


def declared_names(specs: Iterable[ParamSpec], config_sections: Iterable[str] = ()) -> List[str]:
    """Every parameter name a node declares (its own table plus ``preset`` and the config fields)."""
    names = [spec.name for spec in specs]
    sections = list(config_sections)
    if sections:
        names.append('preset')
        names += [spec.name for spec in config_specs('gpu', sections)]
    return names


def _plain(value: Any) -> Any:
    """Parameter value → plain Python (arrays → lists)."""
    if isinstance(value, (list, tuple)) or hasattr(value, 'tolist'):
        return list(value.tolist() if hasattr(value, 'tolist') else value)
    return value


class NodeParameters:
    """Declares a node's parameters, holds their values, validates changes (reasons on rejection).

    `on_change(name, value)` is called after an accepted run-time change of a runtime parameter.
    """

    def __init__(self, node, specs: Sequence[ParamSpec], config_sections: Sequence[str] = (),
                 runtime_sections: Sequence[str] = (), on_change: Optional[Callable[[str, Any], None]] = None):
        self.node = node
        self.specs: Dict[str, ParamSpec] = {spec.name: spec for spec in specs}
        self.config_sections = tuple(config_sections)
        self.on_change = on_change
        self.values: Dict[str, Any] = {}
        self.preset = 'gpu'
        if self.config_sections:
            self.preset = node.declare_parameter(
                'preset', 'gpu', ParameterDescriptor(
                    description=f'configuration preset: {", ".join(sorted(PRESETS))} (read at start-up)',
                    dynamic_typing=True)).value
            if self.preset not in PRESETS:
                raise ValueError(f'parameter preset: unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}')
            for spec in config_specs(self.preset, self.config_sections, runtime_sections):
                self.specs[spec.name] = spec
        for spec in self.specs.values():
            value = _plain(node.declare_parameter(spec.name, spec.default, _descriptor(spec)).value)
            problem = self._check(spec, value)
            if problem:
                raise ValueError(f'parameter {spec.name}: {problem}')
            self.values[spec.name] = value
        self.config: Optional[F3RMConfig] = None
        if self.config_sections:
            self.config = self._build_config(self.values)
        self._pending: Dict[str, Any] = {}
        node.add_on_set_parameters_callback(self._on_set)
        node.add_post_set_parameters_callback(self._after_set)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def _check(self, spec: ParamSpec, value: Any) -> Optional[str]:
        if isinstance(spec.default, bool) and not isinstance(value, bool):
            return f'must be true or false, got {value!r}'
        if isinstance(spec.default, str) and not isinstance(value, str):
            return f'must be a string, got {value!r}'
        if isinstance(spec.default, int) and not isinstance(spec.default, bool) and (
                isinstance(value, bool) or not isinstance(value, int)):
            return f'must be an integer, got {value!r}'
        if isinstance(spec.default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f'must be a number, got {value!r}'
        return spec.validator(value) if spec.validator is not None else None

    def _build_config(self, values: Mapping[str, Any]) -> F3RMConfig:
        overrides = {name: values[name] for name in values if name.split('.')[0] in self.config_sections}
        try:
            return make_config(self.preset, overrides=unflatten(overrides))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(str(error).strip('"')) from error

    def _on_set(self, parameters: List[Parameter]) -> SetParametersResult:
        changed = dict(self.values)
        for parameter in parameters:
            spec = self.specs.get(parameter.name)
            if spec is None:
                if parameter.name == 'preset':
                    return SetParametersResult(successful=False, reason='preset is read at start-up only; '
                                               'restart the node with another preset')
                continue  # e.g. use_sim_time: rclpy's own
            if not spec.runtime:
                return SetParametersResult(successful=False, reason=f'{spec.name} is read at start-up only; '
                                           'restart the node to change it')
            value = _plain(parameter.value)
            problem = self._check(spec, value)
            if problem:
                return SetParametersResult(successful=False, reason=f'{spec.name} {problem}')
            changed[spec.name] = value
        if self.config_sections:
            try:
                self._build_config(changed)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
        self._pending = {p.name: changed[p.name] for p in parameters if p.name in self.specs}
        return SetParametersResult(successful=True)

    def _after_set(self, parameters: List[Parameter]) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        self.values.update(pending)
        if self.config_sections:
            self.config = self._build_config(self.values)
        for name, value in pending.items():
            if self.on_change is not None:
                self.on_change(name, value)


# ------------------------------------------------------------------------------------------------ status

class ProblemLog:
    """Counts problems by kind and logs each kind at most once per `period_s` (with the count since)."""

    def __init__(self, logger, period_s: float = 5.0):
        self.logger = logger
        self.period_s = period_s
        self.counts: Dict[str, int] = {}
        self._last: Dict[str, Tuple[float, int]] = {}
        self.last_problem = ''
        self._lock = threading.Lock()

    def report(self, kind: str, message: str, level: str = 'warn') -> None:
        """Record a problem of `kind`; log it unless the same kind was logged within the period."""
        now = time.monotonic()
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.last_problem = message
            last = self._last.get(kind)
            if last is not None and now - last[0] < self.period_s:
                return
            since = self.counts[kind] - (last[1] if last else 0)
            self._last[kind] = (now, self.counts[kind])
        suffix = f' ({since} times in the last {self.period_s:.0f} s)' if last is not None and since > 1 else ''
        getattr(self.logger, level)(f'{message}{suffix}')


def status_message(name: str, values: Mapping[str, Any], level: int = DiagnosticStatus.OK,
                   message: str = '', hardware_id: str = '') -> DiagnosticStatus:
    """``diagnostic_msgs/DiagnosticStatus`` with one KeyValue per entry (floats to 4 significant digits)."""
    def text(value: Any) -> str:
        if isinstance(value, float):
            return 'nan' if math.isnan(value) else f'{value:.4g}'
        return str(value)
    return DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                            values=[KeyValue(key=str(k), value=text(v)) for k, v in values.items()])


def status_values(msg: DiagnosticStatus) -> Dict[str, str]:
    """Inverse of `status_message` for readers: {key: value string}."""
    return {kv.key: kv.value for kv in msg.values}


# ------------------------------------------------------------------------------------------------ aligned images

LABEL_ENCODINGS = ('16UC1', 'mono16', '8UC1', 'mono8')


def depth_to_image(depth: np.ndarray, stamp, frame_id: str) -> Image:
    """H x W float32 metres (0 = invalid) → ``32FC1`` Image (little endian, tight step)."""
    values = np.ascontiguousarray(np.asarray(depth, dtype='<f4'))
    if values.ndim != 2:
        raise ValueError(f'depth must be H x W, got {values.shape}')
    return _raw_image(values, '32FC1', 4, stamp, frame_id)


def labels_to_image(labels: np.ndarray, stamp, frame_id: str) -> Image:
    """H x W object ids (0 = background) → ``16UC1`` Image (little endian, tight step)."""
    values = np.asarray(labels)
    if values.ndim != 2:
        raise ValueError(f'label image must be H x W, got {values.shape}')
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError('object ids must be in 0..65535')
    return _raw_image(np.ascontiguousarray(values.astype('<u2')), '16UC1', 2, stamp, frame_id)


def _raw_image(values: np.ndarray, encoding: str, itemsize: int, stamp, frame_id: str) -> Image:
    msg = Image()
    msg.header = conversions.make_header(frame_id, stamp)
    msg.height, msg.width = values.shape
    msg.encoding, msg.is_bigendian, msg.step = encoding, 0, values.shape[1] * itemsize
    msg.data = conversions._as_uint8_array(values)
    return msg


def image_to_labels(msg: Image) -> np.ndarray:
    """Label Image (16UC1 / mono16 / 8UC1 / mono8 object ids) → H x W uint16."""
    if msg.encoding not in LABEL_ENCODINGS:
        raise ValueError(f'unsupported label encoding {msg.encoding!r}; expected one of {LABEL_ENCODINGS}')
    if msg.encoding in ('16UC1', 'mono16'):
        # depth_to_metres with scale 1 returns the raw 16-bit values as float32: exact for 0..65535.
        return conversions.depth_to_metres(msg, 1.0).astype(np.uint16)
    return conversions.image_to_rgb(msg)[..., 0].astype(np.uint16)


def encode_label_names(names: Mapping[int, str]) -> str:
    """{id: name} → JSON text for a ``std_msgs/String`` (``{"1": "mug", ...}``)."""
    return json.dumps({str(int(k)): str(v) for k, v in sorted(names.items())})


def decode_label_names(text: str) -> Dict[int, str]:
    """JSON ``{"1": "mug"}`` → {1: 'mug'}; ValueError with the reason for anything else."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f'label names are not JSON: {error}') from error
    if not isinstance(data, dict):
        raise ValueError(f'label names must be a JSON object {{"id": "name"}}, got {type(data).__name__}')
    try:
        return {int(k): str(v) for k, v in data.items()}
    except (TypeError, ValueError) as error:
        raise ValueError(f'label ids must be integers: {error}') from error


def set_torch_threads(count: int) -> None:
    """Limit torch's intra-op threads of this process (0 = leave torch's default).

    On a small CPU shared by several node processes, one thread per process is several times faster than
    torch's default (measured on 2 cores with another busy process: 0.5 s vs 1.7-2.9 s per cpu-tiny step).
    """
    if count > 0:
        import torch
        torch.set_num_threads(int(count))


def expand_path(path: str) -> str:
    """'~' and environment variables expanded; '' stays ''."""
    return os.path.expandvars(os.path.expanduser(path)) if path else ''
