"""Pictures of a queried field: rendered views, similarity overlays, feature PCA, and a text table of clusters."""
from __future__ import annotations

# Imported where used (heavy): scenes.table (open3d) for `default_view`, training.trainer (nerfstudio) to render a
# bare model.
import contextlib
from typing import Dict, Optional, Sequence, Union

import numpy as np

from ..query.clusters import Cluster
from ..capture.frames import PosedFrame
from ..query.grasps import Grasp
from ..geometry import WorkspaceBox
from ..query.relevancy import SOFTMAX_FLOOR, TextQuery
from ..training.render import feature_pca, overlay


def _view_arguments(pose: Union[PosedFrame, np.ndarray], K, width, height):
    if isinstance(pose, PosedFrame):
        return pose.T_base_optical, pose.K, pose.width, pose.height
    if K is None or width is None or height is None:
        raise ValueError('a bare pose needs K, width and height (or pass a PosedFrame)')
    return np.asarray(pose, dtype=np.float64), np.asarray(K, dtype=np.float64), int(width), int(height)


def default_view(box: WorkspaceBox, width: int = 320, height: int = 240,
                 hfov_deg: float = 60.0) -> PosedFrame:
    """Return a probe frame (black image) looking at the workspace from behind and above (the robot's side).

    The camera sits on the -x side of the workspace centre at 50° elevation, far enough for the whole box.
    """
    from ..scenes.table import look_at, pinhole_intrinsics
    K = pinhole_intrinsics(width, height, hfov_deg)
    size = box.max_xyz - box.min_xyz
    distance = 1.1 * np.linalg.norm(size) / (2 * np.tan(np.radians(hfov_deg) / 2) * min(1.0, height / width))
    elevation = np.radians(50.0)
    eye = box.center + distance * np.array([-np.cos(elevation), 0.0, np.sin(elevation)])
    return PosedFrame(np.zeros((height, width, 3), np.uint8), K, look_at(eye, box.center))


def render_view(source, pose: Union[PosedFrame, np.ndarray], K: Optional[np.ndarray] = None,
                width: Optional[int] = None, height: Optional[int] = None, query: Optional[TextQuery] = None,
                box: Optional[WorkspaceBox] = None, lock=None) -> Dict[str, np.ndarray]:
    """Render a view of a trainer or a model: rgb [H, W, 3], depth [H, W] (metres), accumulation, feature.

    `source` is an `OnlineTrainer` (its lock and box are used) or an `F3RMModel` (then give `box`, and the
    `lock` if a trainer uses the model). `pose` is a PosedFrame or a 4x4 T_base_optical with `K`, `width`,
    `height`. With `query`, the result has `similarity` [H, W]; the model's own query is restored after.
    """
    T, K, width, height = _view_arguments(pose, K, width, height)
    if hasattr(source, 'render') and hasattr(source, 'model'):       # an OnlineTrainer
        model, lock, box = source.model, source.lock, source.box
        render = source.render
    else:
        model = source
        if box is None:
            raise ValueError('rendering a bare model needs its workspace box (box=WorkspaceBox...)')
        render = None
    with (lock if lock is not None else contextlib.nullcontext()):
        previous = model.query
        model.set_query(query)
        try:
            if render is not None:
                return render(T, K, width, height)
            from ..training.trainer import render_model
            return render_model(model, box, T, K, width, height)
        finally:
            model.query = previous


def similarity_overlay(view: Dict[str, np.ndarray], query: Optional[TextQuery] = None,
                       colormap: str = 'turbo', alpha: float = 0.6) -> np.ndarray:
    """Float RGB [H, W, 3]: a rendered view's similarity over its RGB, desaturated so the heat stands out.

    In pairwise-softmax mode the colour scale starts at 0.5 (no more like the query than a negative), as
    LERF/F3RM show it; in cosine mode it spans the image's range. The view's colours are mostly greyed out:
    a red mug under a red heat would otherwise look the same as without it.
    """
    if 'similarity' not in view:
        raise ValueError('the view has no similarity: render it with a query')
    lo = hi = None
    if query is not None and query.contrastive:
        lo, hi = SOFTMAX_FLOOR, max(float(np.nanmax(view['similarity'])), SOFTMAX_FLOOR + 1e-3)
    rgb = np.clip(view['rgb'], 0, 1)
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    muted = 0.25 * rgb + 0.75 * grey[..., None]
    return overlay(muted, view['similarity'], colormap, alpha, lo, hi)


def similarity_view(source, pose: Union[PosedFrame, np.ndarray], query: TextQuery,
                    K: Optional[np.ndarray] = None, width: Optional[int] = None, height: Optional[int] = None,
                    box: Optional[WorkspaceBox] = None, lock=None, colormap: str = 'turbo') -> np.ndarray:
    """Render a view (see `render_view`) and return its similarity overlay, float RGB [H, W, 3] in [0, 1]."""
    view = render_view(source, pose, K, width, height, query=query, box=box, lock=lock)
    return similarity_overlay(view, query, colormap)


def feature_pca_image(view: Dict[str, np.ndarray]) -> np.ndarray:
    """Float RGB [H, W, 3]: the first three principal components of a rendered view's features."""
    return feature_pca(view['feature'])


def cluster_table(clusters: Sequence[Cluster], limit: int = 10) -> str:
    """Human-readable lines: rank, centroid, extent, mean relevancy, points (metres)."""
    if not clusters:
        return 'no clusters above the threshold'
    lines = [f'{"#":>2}  {"centroid x y z (m)":<24} {"extent (m)":<21} {"relev.":>6} {"points":>6}']
    for rank, cluster in enumerate(clusters[:limit]):
        c, e = cluster.centroid, cluster.extent
        lines.append(f'{rank:>2}  {c[0]:7.3f} {c[1]:7.3f} {c[2]:7.3f}  {e[0]:6.3f} {e[1]:6.3f} {e[2]:6.3f} '
                     f'{cluster.relevancy:6.3f} {cluster.num_points:6d}')
    return '\n'.join(lines)


def grasp_table(grasps: Sequence[Grasp], reasons: Sequence[str] = (), limit: int = 10) -> str:
    """Human-readable lines: rank, cluster, approach, position, opening, score; then clusters without a grasp."""
    lines = []
    if grasps:
        lines.append(f'{"#":>2}  {"cluster":>7} {"approach":<8} {"position x y z (m)":<24} {"width":>6} {"score":>6}')
        for rank, grasp in enumerate(grasps[:limit]):
            p = grasp.pose[:3, 3]
            lines.append(f'{rank:>2}  {grasp.cluster_index:>7} {grasp.approach:<8} '
                         f'{p[0]:7.3f} {p[1]:7.3f} {p[2]:7.3f}  {grasp.width:6.3f} {grasp.score:6.3f}')
    lines += [f'no grasp for cluster {i}: {why}' for i, why in enumerate(reasons) if why]
    return '\n'.join(lines) or 'no grasp candidates'
