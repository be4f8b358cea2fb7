"""Draw the package's structure from its imports into docs/structure.md, and check its size rules.

Every ``import`` in ``f3rm_ros/`` (at module top or inside functions) becomes a module -> module edge; modules are
grouped into rooms (``core/capture``, ``core/query``, ``ros``, ``harness`` ...). The drawing has one graph of rooms
(mermaid, with the number of module edges on each arrow) and, per room, each module's size and what it imports.

Rules checked (exit status 1 with ``--check`` when one is broken, or when docs/structure.md is not up to date):
no module over 600 lines; a class over 300 lines states its reason in a docstring paragraph that starts with
``Why one class:``; the layers point one way (core imports nothing of ros, harness, commands or bench; ros imports
nothing of harness, commands or bench); no import cycle between modules.

Usage: ``python scripts/draw_structure.py`` (writes the drawing) or ``python scripts/draw_structure.py --check``.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'f3rm_ros'
OUTPUT = ROOT / 'docs' / 'structure.md'
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300
REASON = 'Why one class:'
# a room may not import from the rooms listed for it
FORBIDDEN = {'core': ('ros', 'harness', 'commands', 'bench'), 'ros': ('harness', 'commands', 'bench')}


def module_name(path: Path) -> str:
    """Name the module of `path`: ``f3rm_ros.core.query.voxels`` (a package is its ``__init__``)."""
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(parts)


def room_of(module: str) -> str:
    """Name the room of `module`: its package below f3rm_ros (``core`` for core's own modules, ``top`` for cli ...)."""
    parts = module.split('.')[1:]
    if not parts or (len(parts) == 1 and not (PACKAGE / parts[0]).is_dir()):
        return 'top'
    if parts[0] == 'core' and len(parts) > 1 and (PACKAGE / 'core' / parts[1]).is_dir():
        return f'core/{parts[1]}'
    return parts[0]


def imported_modules(path: Path, name: str, known: Set[str]) -> Set[str]:
    """Return the f3rm_ros modules `path` imports (``from .x import y`` counts y when y is a module, else x)."""
    is_package = path.name == '__init__.py'
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split('.')
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                prefix = '.'.join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ''
            targets = [f'{prefix}.{alias.name}' if f'{prefix}.{alias.name}' in known else prefix
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:   # `import f3rm_ros.core.x.y` names its deepest known module
                target = target.rpartition('.')[0]
            if target and target != name:
                found.add(target)
    return found


def large_classes(path: Path) -> List[Tuple[str, int, str]]:
    """(class, lines, stated reason or '') of the classes in `path` longer than `MAX_CLASS_LINES`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            if size > MAX_CLASS_LINES:
                doc = ast.get_docstring(node) or ''
                reason = next((p.strip()[len(REASON):].strip().replace('\n', ' ') for p in doc.split('\n\n')
                               if p.strip().startswith(REASON)), '')
                out.append((node.name, size, reason))
    return out


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Return the strongly connected groups of more than one module (Tarjan), each sorted.

    A package's ``__init__`` importing its own submodules (re-exports) is no edge here: a submodule may import the
    names its package defines without that being a cycle of meaning.
    """
    edges = {v: {w for w in targets if not w.startswith(v + '.')} for v, targets in edges.items()}
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def draw() -> Tuple[str, List[str]]:
    """Return (the Markdown drawing, the broken rules)."""
    paths = {module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}
    known = set(paths)
    edges = {name: imported_modules(path, name, known) for name, path in paths.items()}
    lines = {name: len(path.read_text().splitlines()) for name, path in paths.items()}
    rooms: Dict[str, List[str]] = defaultdict(list)
    for name in sorted(paths):
        rooms[room_of(name)].append(name)
    room_edges: Dict[Tuple[str, str], int] = defaultdict(int)
    for source, targets in edges.items():
        for target in targets:
            a, b = room_of(source), room_of(target)
            if a != b:
                room_edges[a, b] += 1

    broken = []
    big_modules = [(n, lines[n]) for n in sorted(paths) if lines[n] > MAX_MODULE_LINES]
    broken += [f'{paths[n].relative_to(ROOT)}: {size} lines (over {MAX_MODULE_LINES})' for n, size in big_modules]
    classes = [(paths[n].relative_to(ROOT), c, size, why) for n in sorted(paths)
               for c, size, why in large_classes(paths[n])]
    broken += [f'{p}: class {c} is {size} lines with no "{REASON}" paragraph' for p, c, size, why in classes if not why]
    for source, targets in sorted(edges.items()):
        layer = room_of(source).split('/')[0]
        for target in sorted(targets):
            if room_of(target).split('/')[0] in FORBIDDEN.get(layer, ()):
                broken.append(f'{source} imports {target} (the {layer} layer must not)')
    loops = cycles(edges)
    broken += [f'import cycle: {" -> ".join(group)}' for group in loops]

    out = ['# Structure, drawn from the imports', '',
           'Written by `python scripts/draw_structure.py` from every import in `f3rm_ros/` (at module top or inside',
           'functions); do not edit by hand. Arrows: room -> room, labelled with the number of module -> module',
           'imports. [architecture.md](architecture.md) says what each room is for.', '',
           '```mermaid', 'flowchart LR']
    ids = {room: room.replace('/', '_') for room in rooms}
    core_rooms = [r for r in rooms if r.startswith('core')]
    out.append('  subgraph core_layer["core (no ROS)"]')
    out += [f'    {ids[r]}["{r} ({len(rooms[r])})"]' for r in core_rooms]
    out.append('  end')
    out += [f'  {ids[r]}["{r} ({len(rooms[r])})"]' for r in rooms if r not in core_rooms]
    out += [f'  {ids[a]} -->|{count}| {ids[b]}' for (a, b), count in sorted(room_edges.items())]
    out += ['```', '', '## Checks', '']
    out.append(f'- modules over {MAX_MODULE_LINES} lines: '
               + (', '.join(f'`{paths[n].relative_to(ROOT)}` ({s})' for n, s in big_modules) or 'none'))
    out.append(f'- classes over {MAX_CLASS_LINES} lines: '
               + (', '.join(f'`{c}` in `{p}` ({s}; {why or "no reason stated"})' for p, c, s, why in classes)
                  or 'none'))
    layer_breaks = [b for b in broken if 'layer must not' in b]
    out.append('- imports against the layers (core -> ros/harness/commands/bench, ros -> harness/commands/bench): '
               + ('; '.join(layer_breaks) or 'none'))
    out.append('- import cycles between modules: ' + ('; '.join(' -> '.join(g) for g in loops) or 'none'))
    out += ['', '## Modules by room', '']
    for room, names in rooms.items():
        out += [f'### {room}', '', '| module | lines | imports (f3rm_ros modules) |', '|---|---|---|']
        for name in names:
            short = name[len('f3rm_ros.'):] if name != 'f3rm_ros' else name
            targets = ', '.join(t[len('f3rm_ros.'):] if t != 'f3rm_ros' else t for t in sorted(edges[name]))
            out.append(f'| {short} | {lines[name]} | {targets} |')
        out.append('')
    return '\n'.join(out), broken


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--check', action='store_true',
                        help='write nothing; exit 1 when a rule is broken or docs/structure.md is out of date')
    args = parser.parse_args(argv)
    text, broken = draw()
    for line in broken:
        print(f'rule broken: {line}')
    if args.check:
        stale = not OUTPUT.exists() or OUTPUT.read_text() != text
        if stale:
            print(f'{OUTPUT.relative_to(ROOT)} is out of date: run python scripts/draw_structure.py')
        return 1 if broken or stale else 0
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_text(text)
    print(f'wrote {OUTPUT.relative_to(ROOT)} ({len(broken)} rules broken)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
