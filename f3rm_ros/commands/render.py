"""``f3rm-ros render orbit | path``: novel views of a checkpoint along camera paths, with their novelty."""
# Imported where used (heavy; `f3rm-ros` imports every command module at start-up): the dataset, training, study,
# geometry, query and teacher modules (torch, nerfstudio, open3d, scipy).
import argparse
from pathlib import Path

import numpy as np


def _floats(text):
    try:
        return [float(v) for v in text.split(',') if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f'{text!r}: comma-separated numbers expected') from error


def register(sub) -> None:
    """Add the sub-command with its two path kinds."""
    parser = sub.add_parser('render', help='render a checkpoint along an orbit, the capture path or a camera path')
    kinds = parser.add_subparsers(dest='path_kind', required=True)
    orbit = kinds.add_parser(
        'orbit', formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help='circles around a point of interest, looking at it (then closer circles)',
        description='Render cameras on circles around --center looking at it (one circle per radius, outer '
                    'first), or the cameras of a nerfstudio camera path (--path): RGB, depth, feature PCA and with '
                    '--query the similarity, as PNGs and a side-by-side MP4 (GIF where OpenCV cannot write MP4), '
                    'and views.csv with each view\'s novelty (distance and angle to the nearest training camera '
                    'of --data) and render time.')
    orbit.add_argument('--center', type=_floats, help='point of interest x,y,z in base_frame (m); default: the '
                                                      'workspace centre')
    orbit.add_argument('--radius', type=float, help='circle radius (m)')
    orbit.add_argument('--radii', type=_floats, help='several radii r1,r2,... (outer first: closer circles)')
    orbit.add_argument('--height', type=float, help='camera height above the centre (m)')
    orbit.add_argument('--elevation', type=float, help='camera elevation above the centre (deg; default 30)')
    orbit.add_argument('--up', default='0,0,1',
                       help="the circles' axis x,y,z (a REP 103 base frame's z), or 'auto': the mean image-up of the "
                            "--data cameras (a dataset whose world frame is not z-up)")
    orbit.add_argument('--frames', type=int, default=24, help='views per circle')
    orbit.add_argument('--path', help='nerfstudio camera path JSON (ns-render camera-path format) instead of circles')
    path = kinds.add_parser(
        'path', formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help='the capture trajectory of --data, or it moved inside / outside by --offset',
        description='Render the training cameras of --data in order (training), or each moved --offset metres '
                    'towards (inside) or away from (outside) the trajectory\'s centre; same outputs as orbit.')
    path.add_argument('--along', choices=['training', 'inside', 'outside'], default='training', help='which path')
    path.add_argument('--offset', type=float, default=0.1, help='metres towards / away from the centre')
    path.add_argument('--every', type=int, default=1, help='use every N-th training camera')
    for kind, required in ((orbit, False), (path, True)):
        kind.add_argument('--checkpoint', required=True, help='checkpoint file')
        kind.add_argument('--data', required=required,
                          help='the training dataset: its cameras measure each view\'s novelty' +
                               ('' if required else ' (without it: n/a)'))
        kind.add_argument('--query', help='also render the similarity to this text (comma-separated positives)')
        kind.add_argument('--crop', help='cut-away box xmin,ymin,zmin,xmax,ymax,zmax (m): everything outside it is '
                                         'removed from the renders')
        kind.add_argument('--width', type=int, default=320, help='image width (pixels)')
        kind.add_argument('--height-px', type=int, default=240, help='image height (pixels)')
        kind.add_argument('--fov', type=float, default=60.0, help='horizontal field of view (deg)')
        kind.add_argument('--fps', type=float, default=10.0, help='video frame rate')
        kind.add_argument('--output', default=f'outputs/render/{kind.prog.split()[-1]}', help='output folder')
        kind.add_argument('--device', default='auto', help='cpu | cuda | auto')
        kind.set_defaults(func=run)


def _up_vector(text: str):
    """Parse --up x,y,z (orbit checks the direction itself)."""
    try:
        return [float(v) for v in text.split(',')]
    except ValueError as error:
        raise ValueError(f"--up {text!r}: three numbers x,y,z or 'auto' expected") from error


def _training_poses(args, holdout_every: int):
    """Return the training cameras of --data (the trainer's hold-out rule leaves the rest out) and their indices."""
    from ..core.capture.frames import read_dataset
    from ..core.training.trainer import holdout_split
    if not args.data:
        return [], []
    frames = read_dataset(Path(args.data))
    train, _ = holdout_split(len(frames), holdout_every)
    return [frames[i].T_base_optical for i in train], train


def run(args) -> int:
    """Build the views, render them, print where the files are."""
    from ..core.study.evaluation import load_for_study
    from ..core.geometry import WorkspaceBox
    from ..core.study.orbit import (along_training, cameras_up, check_centre, default_intrinsics, novelty, orbit,
                                    parse_box, read_camera_path, render_path)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f'--checkpoint: {checkpoint} does not exist')
    crop = parse_box(args.crop) if args.crop else None
    model, config, state, notes = load_for_study(checkpoint, args.device)
    box = WorkspaceBox.from_config(config.workspace)
    poses, train_ids = _training_poses(args, config.trainer.holdout_every)
    K = default_intrinsics(args.width, args.height_px, args.fov)
    if args.path_kind == 'path':
        every = max(1, args.every)
        views = along_training(poses[::every], K, args.width, args.height_px, args.along, args.offset,
                               train_ids[::every])
    elif args.path:
        if not Path(args.path).is_file():
            raise FileNotFoundError(f'--path: {args.path} does not exist')
        views = read_camera_path(Path(args.path))
    else:
        radii = args.radii or ([args.radius] if args.radius else None)
        if not radii:
            raise ValueError('give --radius or --radii (or --path FILE)')
        center = check_centre(args.center if args.center else box.center, box)
        if args.up.strip() == 'auto':
            up = cameras_up(poses)
            print(f'up (mean image-up of {len(poses)} training cameras): {np.round(up, 3).tolist()}')
        else:
            up = _up_vector(args.up)
        views = orbit(center, radii, args.frames, K, args.width, args.height_px, args.height, args.elevation, up)
    novelty(views, poses, train_ids)
    query = None
    if args.query:
        from ..core.query.relevancy import embed_query
        from ..core.teachers import make_teacher
        teacher = make_teacher(config.teacher, state=state['teacher']['state'])
        query = embed_query(teacher, [p.strip() for p in args.query.split(',') if p.strip()],
                            list(config.query.negatives), temperature=config.query.temperature)
    out = Path(args.output)
    print(f'{len(views)} views of {checkpoint} (step {state["step"]}) -> {out}' +
          (f'; crop {np.round(crop[0], 3).tolist()}..{np.round(crop[1], 3).tolist()}' if crop else ''))
    for note in notes:
        print(f'checkpoint: {note}')
    result = render_path(model, box, views, out, query=query, crop=crop, fps=args.fps)
    novel = [r['novelty_distance_m'] for r in result['rows'] if r.get('novelty_distance_m') is not None]
    seconds = [r['render_s'] for r in result['rows']]
    if novel:
        print(f'novelty: {min(novel):.3f}-{max(novel):.3f} m from the nearest training camera')
    print(f'render: {np.mean(seconds):.2f} s per view ({np.mean([r["rays_per_s"] for r in result["rows"]]):.0f} '
          'rays/s)')
    print('pictures: ' + ', '.join(str(p) for p in result['folders']))
    print(f'video: {result["video"]}\nviews: {result["csv"]}')
    return 0
