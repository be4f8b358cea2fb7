"""Node parameters from a static table: declared with descriptions, validated when set, reasons on refusal.

Every node declares its parameters from a table of `ParamSpec` rows, so tools and tests can list what a node
accepts without starting ROS (`declared_names`). Parameters are declared with defaults and descriptions and
validated whenever they are set at run time (``ros2 param set``): a bad value is rejected with a reason, and a
parameter that only takes effect at start-up says so instead of silently doing nothing.

The F3RM configuration (`core.config.F3RMConfig`) is declared as dotted parameters (``trainer.steps``,
``query.negatives`` ...) on top of the ``preset`` parameter, so one YAML file (``/**: ros__parameters:``)
configures the launch file, the one-process pipeline and the CLI alike; a change is accepted only when the
whole configuration section still validates (`core.config` dataclasses' ``__post_init__``).
"""
from __future__ import annotations

import ast
import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.parameter import Parameter

from ..core.config import AUTO_PRESET, PRESET_NAMES, F3RMConfig, flatten, make_config, resolve_preset, unflatten

Validator = Callable[[Any], Optional[str]]


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


@functools.lru_cache(maxsize=1)
def config_field_docs() -> Dict[str, str]:
    """{'query.present_relevancy': its comment in core/config/, ...}: what ``ros2 param describe`` shows.

    A field's docstring (the string right after it), else its comment: the comment lines right above it plus the
    one after it on its line (how the config documents range, unit and meaning); sections are `F3RMConfig`'s
    fields and their dataclasses, read from the source of each.
    """
    docs: Dict[str, str] = {}
    defaults = F3RMConfig()
    for section in F3RMConfig.__dataclass_fields__:
        lines = inspect.getsource(type(getattr(defaults, section))).splitlines()
        node = ast.parse('\n'.join(lines)).body[0]
        for position, statement in enumerate(node.body):
            if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
                continue
            after = node.body[position + 1] if position + 1 < len(node.body) else None
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(
                    after.value.value, str):        # an attribute docstring (nerfstudio's way) wins over comments
                docs[f'{section}.{statement.target.id}'] = ' '.join(after.value.value.split())
                continue
            above, row = [], statement.lineno - 2
            while row >= 0 and lines[row].strip().startswith('#'):
                above.insert(0, lines[row].strip().lstrip('#').strip())
                row -= 1
            code = lines[statement.end_lineno - 1]
            inline = code.split('  # ', 1)[1].strip() if '  # ' in code else ''
            text = ' '.join(part for part in above + [inline] if part)
            if text:
                docs[f'{section}.{statement.target.id}'] = text
    return docs


def config_specs(preset: str = 'gpu', sections: Iterable[str] = CONFIG_SECTIONS,
                 runtime_sections: Iterable[str] = ()) -> List[ParamSpec]:
    """`ParamSpec` for each config field of `sections` (dotted names), defaults from `preset`."""
    sections, runtime_sections = set(sections), set(runtime_sections)
    specs = []
    for name, value in flatten(make_config(preset)):
        section = name.split('.')[0]
        if section in sections:
            default = list(value) if isinstance(value, tuple) else value
            doc = config_field_docs().get(name, '')
            specs.append(ParamSpec(name, default, f'{doc} (config {name}, default {value!r})' if doc else
                                   f'F3RM config {name}, default {value!r} (core/config/)',
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

    `on_change(name, value)` is called after an accepted run-time change of a runtime parameter;
    `check(values, config)` may veto a change that passes every single-value check (returns a reason), e.g. a
    voxel size that is valid alone but too fine for the loaded model's workspace.
    """

    def __init__(self, node, specs: Sequence[ParamSpec], config_sections: Sequence[str] = (),
                 runtime_sections: Sequence[str] = (), on_change: Optional[Callable[[str, Any], None]] = None,
                 check: Optional[Callable[[Mapping[str, Any], Optional[F3RMConfig]], Optional[str]]] = None):
        self.node = node
        self.check = check
        self.specs: Dict[str, ParamSpec] = {spec.name: spec for spec in specs}
        self.config_sections = tuple(config_sections)
        self.on_change = on_change
        self.values: Dict[str, Any] = {}
        self.preset = 'gpu'
        self.preset_reason = ''        # which preset runs and why (auto: said once in the log, and on /diagnostics)
        if self.config_sections:
            requested = node.declare_parameter(
                'preset', AUTO_PRESET, ParameterDescriptor(
                    description=f'configuration preset: {", ".join(PRESET_NAMES)} (auto: gpu where CUDA is '
                                'available, else cpu; read at start-up)',
                    dynamic_typing=True)).value
            try:
                self.preset, self.preset_reason = resolve_preset(requested)
            except KeyError:
                raise ValueError(f'parameter preset: unknown preset {requested!r}; choose one of '
                                 f'{list(PRESET_NAMES)}') from None
            node.get_logger().info(self.preset_reason)
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
        # rclpy before Jazzy has no post-set callback: there the accepted values are applied in _on_set.
        self.uses_post_set = hasattr(node, 'add_post_set_parameters_callback')
        if self.uses_post_set:
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
        config = None
        if self.config_sections:
            try:
                config = self._build_config(changed)
            except ValueError as error:
                return SetParametersResult(successful=False, reason=str(error))
        if self.check is not None:
            problem = self.check(changed, config)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
        self._pending = {p.name: changed[p.name] for p in parameters if p.name in self.specs}
        if not self.uses_post_set:
            self._after_set(parameters)
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
