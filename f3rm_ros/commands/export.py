"""``f3rm-ros export mesh``: the field's surfaces as a coloured triangle mesh (PLY / OBJ)."""
# Imported where used (heavy; `f3rm-ros` imports every command module at start-up): the study and geometry modules
# (torch, nerfstudio, open3d, scipy).
import argparse
import time
from pathlib import Path

import numpy as np


def register(sub) -> None:
    """Add the sub-command."""
    parser = sub.add_parser('export', help='export a checkpoint\'s field (mesh)')
    kinds = parser.add_subparsers(dest='export_kind', required=True)
    mesh = kinds.add_parser(
        'mesh', formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help='marching cubes on the density inside the workspace, vertex colours, PLY/OBJ',
        description='Evaluate the opacity of the field over a voxel grid of the workspace (or --crop), extract '
                    'the surface at --level with marching cubes (scikit-image), colour the vertices with the '
                    'field\'s colour and write PLY and/or OBJ (open3d): for MeshLab, Blender, or a motion planner\'s '
                    'collision object. Coordinates are base_frame metres.')
    mesh.add_argument('--checkpoint', required=True, help='checkpoint file')
    mesh.add_argument('--output', default='outputs/export', help='output folder')
    mesh.add_argument('--name', default='mesh', help='file name without suffix')
    mesh.add_argument('--format', choices=['ply', 'obj', 'both'], default='ply', help='file format')
    mesh.add_argument('--voxel-size', type=float,
                      help='grid spacing (m); default: query.voxel_size, coarser when the workspace would need more '
                           'than 256 voxels along its longest side')
    mesh.add_argument('--level', type=float, help='opacity of the surface, 0..1 (default: query.alpha_threshold)')
    mesh.add_argument('--crop', help='only inside this box xmin,ymin,zmin,xmax,ymax,zmax (m)')
    mesh.add_argument('--min-triangles', type=int, default=50,
                      help='drop connected pieces with fewer triangles (floaters); 0 keeps all')
    mesh.add_argument('--device', default='auto', help='cpu | cuda | auto')
    mesh.set_defaults(func=run)


def run(args) -> int:
    """Extract the mesh, write it, print its size and where it is."""
    from ..core.study.evaluation import load_for_study
    from ..core.geometry import WorkspaceBox
    from ..core.study.mesh import auto_voxel_size, extract_mesh, surface_area, write_mesh
    from ..core.study.orbit import parse_box
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f'--checkpoint: {checkpoint} does not exist')
    crop = parse_box(args.crop) if args.crop else None
    if args.voxel_size is not None and args.voxel_size <= 0:
        raise ValueError(f'--voxel-size must be positive, got {args.voxel_size}')
    model, config, state, notes = load_for_study(checkpoint, args.device)
    for note in notes:
        print(f'checkpoint: {note}')
    box = WorkspaceBox.from_config(config.workspace)
    voxel = args.voxel_size or auto_voxel_size(box, config.query.voxel_size)
    print(f'marching cubes over {"the crop box" if crop else "the workspace"} at {voxel * 100:.2f} cm voxels ...')
    started = time.perf_counter()
    mesh = extract_mesh(model, box, config.query, config.feature_field.feature_dim, voxel, args.level, crop,
                        args.min_triangles, progress=True)
    formats = ['ply', 'obj'] if args.format == 'both' else [args.format]
    paths = [write_mesh(mesh, Path(args.output) / f'{args.name}.{suffix}') for suffix in formats]
    lo, hi = mesh['vertices'].min(axis=0), mesh['vertices'].max(axis=0)
    print(f'{len(mesh["vertices"]):,} vertices, {len(mesh["triangles"]):,} triangles, {surface_area(mesh):.3f} m², '
          f'bounds {np.round(lo, 3).tolist()}..{np.round(hi, 3).tolist()} (base_frame, m), '
          f'{time.perf_counter() - started:.1f} s')
    for path in paths:
        print(f'mesh: {path}')
    return 0
