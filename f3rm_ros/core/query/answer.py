"""Text queries over a trained field: a planner's answer (found / not present), heatmap, clusters, grasps.

What a grasp planner gets for "mug"; each stage lives in its own module:

1. `voxels.VoxelField`: the workspace voxel grid, its occupancy (alpha >= ``query.alpha_threshold``, floaters
   dropped) and the occupied voxels' features, cached until the model changes.
2. `relevancy`: the text becomes positives (averaged) and negatives, embedded once per phrase
   (`PhraseEmbeddings`); relevancy per voxel is the pairwise softmax against the closest negative; a threshold
   (Otsu above the 0.5 floor, a percentile, or a value) selects the relevant voxels.
3. `clusters`: connected groups of selected voxels (on the GPU when the features are there), a
   gravity-aligned box each, ranked by evidence; a group inside the table, floating above a grounded answer
   (`support`), or that the keyframes do not bear out (`views`, where the querier has keyframes) is dropped.
4. The answer: *not present* when no voxel is more like the query than like the negatives or the best
   cluster's peak relevancy stays below ``query.present_relevancy``; otherwise *found*.
5. `grasps.GraspPlanner`: parallel-jaw candidates per cluster against the solid occupancy (``grasp.*``).

All outputs are in ``base_frame`` metres (the workspace's frame); nothing here imports rclpy.
"""
from __future__ import annotations

# Imported where used (optional): open3d, only for PLY files (`_open3d`), so queries run where it is not installed.
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from scipy.spatial import cKDTree

from .clusters import Cluster, components, group_indices, link_voxels, make_cluster, rank_clusters
from ..capture.frames import PosedFrame
from ..config import F3RMConfig
from ..geometry import WorkspaceBox
from .grasps import Grasp, GraspPlanner
from .support import support_under_box
from .relevancy import (FLOOR_MARGIN, SOFTMAX_FLOOR, PhraseEmbeddings, TextQuery, check_phrases, embed_query,
                        positive_phrases, relevancy, select_threshold)
from ..training.render import colorize
from .views import view_support
from .voxels import MIN_COMPONENT_VOLUME, VoxelField, model_device

FOUND, NOT_PRESENT = 'found', 'not_present'
# The peak relevancy a found object reaches, per teacher (used while ``query.present_relevancy`` is negative).
# labels: `f3rm-ros bench semantic` seeds 11-30 (20 layouts, cpu-tiny, 500 steps): 100 present objects peaked at
# 0.989-1.000, 60 absent catalogue objects at 0.505-0.860 (median 0.546); 0.92 is the middle of the gap (seeds
# 31-50, run once afterwards: present >= 0.957, absent <= 0.910, all separated).
PRESENT_RELEVANCY = {'labels': 0.92}
# CLIP relevancy runs lower than the labels teacher's and could not be calibrated here (no weights offline): a
# bound just above the 0.5 floor only refuses what barely beats the negatives. Calibrate yours with `bench
# semantic --data` on a scan with label maps and set query.present_relevancy.
UNCALIBRATED_PRESENT_RELEVANCY = 0.55


def present_relevancy(query_config, teacher_name: str) -> float:
    """Return the bound a found object's peak relevancy must reach: the configured one, else the teacher's."""
    if query_config.present_relevancy >= 0:
        return float(query_config.present_relevancy)
    return PRESENT_RELEVANCY.get(teacher_name, UNCALIBRATED_PRESENT_RELEVANCY)


# The peak relevancy of a cluster: the mean of its most relevant voxels (one stray voxel is not a peak).
PEAK_VOXELS = 10
# Selections of at most this many voxels are clustered on the host even when the features live on a GPU: their
# relevancy is on the host already (the heatmap needs it), and the GPU's label propagation pays a host sync every
# few rounds, more than scipy takes for a few thousand voxels. Bigger selections are clustered on the GPU.
HOST_CLUSTER_MAX_VOXELS = 20000


@dataclass
class Heatmap:
    """Relevancy over the occupied voxels of the workspace, in ``base_frame``.

    Attributes:
        points: [N, 3] float32 voxel centres (metres).
        rgb: [N, 3] uint8 reconstructed colour (viewed from above).
        relevancy: [N] float32 relevancy of each point to the query.
        alpha: [N] float32 per-voxel opacity ``1 - exp(-density * voxel)``.
        selected: [N] bool, relevancy above the query's threshold (the points that were clustered).
        voxel_size: grid spacing in metres.
        base_frame: frame the points are in.
        normals: [N, 3] float32 unit surface normals (base_frame axes), or None: only a model trained with
            ``model.predict_normals`` has them (the query node's cloud then carries normal_x/y/z).
    """

    points: np.ndarray
    rgb: np.ndarray
    relevancy: np.ndarray
    alpha: np.ndarray
    selected: np.ndarray
    voxel_size: float
    base_frame: str = 'base_link'
    normals: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def colors(self, mode: str = 'relevancy', colormap: str = 'turbo', lo: Optional[float] = None,
               hi: Optional[float] = None) -> np.ndarray:
        """[N, 3] uint8: the relevancy through `colormap` (``mode='relevancy'``) or the RGB (``'rgb'``)."""
        if mode == 'rgb':
            return self.rgb
        if mode != 'relevancy':
            raise ValueError(f"colour mode must be 'relevancy' or 'rgb', got {mode!r}")
        if len(self) == 0:
            return np.zeros((0, 3), np.uint8)
        lo = float(np.min(self.relevancy)) if lo is None else lo
        hi = float(np.max(self.relevancy)) if hi is None else hi
        return (colorize(self.relevancy, colormap, lo, hi) * 255 + 0.5).astype(np.uint8)


@dataclass
class QueryResult:
    """Everything one text query produced.

    Attributes:
        text: the query as given (comma-separated positives, or the positives joined).
        positives: phrases averaged into the query embedding.
        negatives: phrases the positives were contrasted with.
        status: `FOUND` or `NOT_PRESENT`; `reason` says why in a sentence.
        heatmap: the occupied voxels with their relevancy (also when not present: pictures use it).
        clusters: best first (`clusters.rank_clusters`), at most the request's maximum; empty unless found.
        grasps: candidates in the clusters' order (every grasp of cluster 0 before any of cluster 1 ...), empty
            when cluster 0 has none (`withheld` counts the lower clusters' grasps left out, so that grasps[0] is
            never another object's); `grasp_reasons[i]` says why cluster i has none ('' where it has some).
        notes: per cluster, '' or why a planner should doubt it (`cluster_notes`: minor, or apart from cluster 0).
        withheld: grasps of lower clusters left out because cluster 0 has none.
        timings: seconds per stage: 'text', 'density', 'occupancy', 'features' (0 when the voxel cache was
            warm), 'relevancy', 'threshold', 'cluster', 'grasps', and 'total'.
        threshold: relevancy threshold the clustered points passed (nan with no occupied voxels).
        peak: `peak_relevancy` of the best cluster before the verdict (nan without a cluster): the number
            ``query.present_relevancy`` is compared with (kept for a not-present answer too, to calibrate it).
    """

    text: str
    positives: List[str]
    negatives: List[str]
    status: str
    reason: str
    heatmap: Heatmap
    clusters: List[Cluster]
    grasps: List[Grasp]
    grasp_reasons: List[str]
    timings: Dict[str, float]
    threshold: float
    peak: float = float('nan')
    notes: List[str] = field(default_factory=list)
    withheld: int = 0

    @property
    def found(self) -> bool:
        """True when the queried thing was found."""
        return self.status == FOUND

    @property
    def best(self) -> Optional[Cluster]:
        """The top cluster, or None."""
        return self.clusters[0] if self.clusters else None


# The support under a cluster is read below its top plus this (m): a group of voxels inside a thin table lies
# below the table's top face, which its ring of columns must still see (without the margin "bowl" answered a
# second cluster 1.5 cm under the table top, and the mug's box reached 2 cm into it).
SUPPORT_CEILING_MARGIN = 0.02
# A cluster whose lowest voxel is more than this above its support (m), with nothing occupied under most of its
# footprint, floats: a NeRF floater, not an object (objects rest on the table or on another object).
FLOAT_GAP = 0.03
# The support read from occupancy lies above the true surface: a NeRF's density rises over a couple of voxels in
# front of what the cameras saw, so at query.alpha_threshold the table's top face reads 2 cm high on bench semantic's
# cpu-tiny fields (seeds 11-13: 0.02 m for a table top at 0). Only voxels more than this many voxels below the support
# estimate are inside the table: cutting at the estimate itself took the objects' feet away (every box 1-2 cm too
# high, median error 0.55 -> 1.19 cm, and a 2 cm screwdriver lost its cluster).
SUPPORT_FUZZ_VOXELS = 2
# A cluster is cut to the foot of its body (`FieldQuerier._under_body`) only when the body holds at least this share
# of it (a moved ball measured 0.48-0.74 with its table bleed; a banana lying flat has a few top voxels).
MIN_BODY_SHARE = 0.25
# An object's foot: the grid columns of its body and their 8 neighbours.
FOOT_RING = np.array([(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)])
# Share of a floating cluster's footprint columns that must hold occupied voxels between it and the support for it
# to count as resting on something.
RESTING_SHARE = 0.5


# A cluster with fewer voxels than this share of cluster 0's is *minor*: a fragment, a fringe or a ghost rather than
# another instance of the object (a 17-voxel cluster beside the box once took grasps[0] for "mug").
MINOR_SHARE = 0.25


def cluster_notes(clusters: Sequence[Cluster], points: np.ndarray) -> List[str]:
    """Per cluster, '' for cluster 0 and for every other cluster what sets it apart from cluster 0.

    'minor: N voxels, P % of cluster 0's, D m from it' below `MINOR_SHARE` of cluster 0's voxels, else
    'separate: N voxels, D m from cluster 0' (another instance, or another object the query also matches). D is
    the gap between the two clusters' nearest voxel centres (`points` [M, 3] are the heatmap's).
    """
    if not clusters:
        return []
    top = clusters[0]
    tree = cKDTree(points[top.indices]) if len(top.indices) else None
    notes = ['']
    for cluster in clusters[1:]:
        gap = float(tree.query(points[cluster.indices])[0].min()) if tree is not None and len(cluster.indices) else \
            float(np.linalg.norm(cluster.centroid - top.centroid))
        share = cluster.num_points / max(top.num_points, 1)
        if share < MINOR_SHARE:
            notes.append(f"minor: {cluster.num_points} voxels, {100 * share:.0f} % of cluster 0's, {gap:.2f} m from it")
        else:
            notes.append(f'separate: {cluster.num_points} voxels, {gap:.2f} m from cluster 0')
    return notes


def grasps_in_cluster_order(grasps: Sequence[Grasp], reasons: Sequence[str]) -> Tuple[List[Grasp], int]:
    """(grasps ordered by cluster, each cluster's best first; how many were withheld).

    When cluster 0 has no grasp (`reasons[0]` says why), none is returned: a planner that takes grasps[0] must
    never pick up another object than the best answer.
    """
    ordered = sorted(grasps, key=lambda grasp: grasp.cluster_index)   # stable: each cluster's order is kept
    if reasons and reasons[0] and not any(grasp.cluster_index == 0 for grasp in ordered):
        return [], len(ordered)
    return ordered, 0


def check_request(positives: Union[str, Sequence[str]], negatives: Optional[Sequence[str]] = None,
                  threshold: Optional[str] = None, threshold_value: Optional[float] = None,
                  query_config=None) -> None:
    """Raise ValueError saying what is wrong with a question, before any model is needed.

    The query node checks every request with this (service, action and topic give the same reasons), and
    `FieldQuerier.query` raises the same errors. `negatives` None means the configured ones (not checked
    against the positives: the configured "object" may be asked for).
    """
    phrases = positive_phrases(positives)
    if negatives is not None:
        both = sorted({p.lower() for p in phrases} & {n.lower() for n in check_phrases(negatives, 'negative')})
        if both:
            raise ValueError(f'{", ".join(repr(b) for b in both)} is both a positive and a negative phrase: a '
                             'phrase cannot be contrasted with itself (leave negatives empty to use query.negatives)')
    if query_config is not None:
        _threshold_level(threshold or query_config.threshold, threshold_value, query_config)


def peak_relevancy(cluster: Cluster, values: np.ndarray) -> float:
    """Mean of the cluster's `PEAK_VOXELS` most relevant voxels."""
    members = np.sort(values[cluster.indices])[::-1]
    return float(members[:PEAK_VOXELS].mean()) if members.size else float('nan')


class FieldQuerier:
    """Answers text queries over a trained `F3RMModel` (see the module docstring for the stages).

    Args:
        model: the F3RM model (eval or train mode; its mode is restored after every evaluation).
        teacher: the teacher the field was distilled from (its text encoder embeds the query).
        config: the configuration; `workspace`, `query` and `grasp` are used.
        lock: held while the model is evaluated, one chunk at a time (the `OnlineTrainer.lock` of a live
            trainer: training goes on between chunks, so a heatmap of a live model may mix a few steps).
        surface_only: publish only occupied voxels with a free 6-neighbour (a shell); see `VoxelField`.
        min_component_volume: occupied groups smaller than this (m³) are dropped as floaters (0 keeps them).
        keyframes: returns the keyframes the field was trained on (a live session's store); with them, clusters
            fewer than ``query.min_support_views`` saw are ghosts and not reported (`views.view_support`).
    """

    def __init__(self, model, teacher, config: F3RMConfig, lock=None, surface_only: bool = False,
                 min_component_volume: float = MIN_COMPONENT_VOLUME,
                 keyframes: Optional[Callable[[], Sequence[PosedFrame]]] = None):
        self.model = model
        self.teacher = teacher
        self.config = config
        self.box = WorkspaceBox.from_config(config.workspace)
        self.voxels = VoxelField(model, self.box, config.query, config.feature_field.feature_dim, lock,
                                 surface_only, min_component_volume)
        self.embeddings = PhraseEmbeddings(teacher, config.query.text_cache_size)
        self._text_queries: 'OrderedDict[tuple, TextQuery]' = OrderedDict()   # whole queries, as `embeddings`
        self.grasp_planner = GraspPlanner(config.grasp)
        self.present_relevancy = present_relevancy(config.query, getattr(teacher, 'name', ''))
        self.keyframes = keyframes
        self.buried = 0                      # groups of the last query that lay inside the table
        self.ghosts: List[str] = []          # why each group of the last query no keyframe bore out was dropped
        self.floating: Dict[int, float] = {}  # id of a reported floating cluster of the last query -> its gap (m)

    def invalidate(self) -> None:
        """Forget the cached voxels: call after the model changed (training steps, a new checkpoint)."""
        self.voxels.invalidate()

    def prepare(self) -> float:
        """Evaluate and cache the occupied voxels if needed; returns seconds (0 when the cache was warm)."""
        return self.voxels.prepare()

    # ---- queries

    def embed(self, positives: Union[str, Sequence[str]], negatives: Optional[Sequence[str]] = None):
        """Embed a query: (TextQuery, positives, negatives).

        `positives` is comma-separated text or phrases; `negatives` None means the configured ones. ValueError
        when there is no positive phrase or a phrase is unusable.
        """
        phrases = positive_phrases(positives)
        q = self.config.query
        negatives = check_phrases(q.negatives if negatives is None else negatives, 'negative')
        key = (tuple(phrases), tuple(negatives), q.temperature, q.mode)
        query = self._text_queries.get(key)
        if query is None:
            query = embed_query(self.teacher, phrases, negatives, q.temperature, q.mode, self.embeddings)
        if q.text_cache_size:
            self._text_queries[key] = query
            self._text_queries.move_to_end(key)
            while len(self._text_queries) > q.text_cache_size:
                self._text_queries.popitem(last=False)
        return query, phrases, negatives

    def relevancy_of(self, query: TextQuery) -> torch.Tensor:
        """Relevancy [N] float32 of the cached voxels (call `prepare` first), on the features' device."""
        features = self.voxels.unit_features()
        query = query.to(features.device)
        chunk = self.voxels.chunk_size(features.device)
        with torch.no_grad():
            if len(features) <= chunk:
                return relevancy(features, query, normalized=True)
            return torch.cat([relevancy(features[start:start + chunk], query, normalized=True)
                              for start in range(0, len(features), chunk)])

    def query(self, positives: Union[str, Sequence[str]], negatives: Optional[Sequence[str]] = None,
              threshold: Optional[str] = None, threshold_value: Optional[float] = None,
              max_clusters: Optional[int] = None, cluster: bool = True,
              progress: Optional[Callable[[str], None]] = None) -> QueryResult:
        """Answer a query: status and reason, heatmap, ranked clusters and grasp candidates.

        `positives` is comma-separated text or a list of phrases; `negatives` None uses ``query.negatives``;
        `threshold` None uses ``query.threshold`` ('otsu' | 'percentile' | 'value'), `threshold_value` the
        percentile (0..100) or relevancy it needs; `max_clusters` None uses ``query.max_clusters`` (0 = all).
        `cluster` False gives the heatmap alone (no clusters, no grasps). `progress(stage)` is called before
        each stage ('text', 'field' when the voxel cache is cold, 'relevancy', 'threshold', 'cluster',
        'grasps'); an exception it raises stops the query there (how a cancelled action goal ends it).

        Raises:
            ValueError: no positive phrase, an unusable phrase, or an out-of-range threshold.
        """
        q = self.config.query
        check_request(positives, negatives, threshold, threshold_value, q)
        mode = q.threshold if not threshold else threshold
        level = _threshold_level(mode, threshold_value, q)
        limit = q.max_clusters if max_clusters is None else int(max_clusters)
        report = progress if progress is not None else (lambda stage: None)
        started = time.perf_counter()
        report('text')
        text_query, phrases, negatives = self.embed(positives, negatives)
        timings = {'text': time.perf_counter() - started}
        warm = self.voxels.cached
        if not warm:
            report('field')
        self.voxels.prepare()
        for stage in ('density', 'occupancy', 'features'):
            timings[stage] = 0.0 if warm else self.voxels.timings.get(stage, 0.0)

        report('relevancy')
        mark = time.perf_counter()
        values_device = self.relevancy_of(text_query)
        values = values_device.cpu().numpy()
        timings['relevancy'] = time.perf_counter() - mark
        report('threshold')
        mark = time.perf_counter()
        cut = select_threshold(values, mode, q.percentile if mode == 'percentile' else level, level,
                               text_query.contrastive)
        selected = values > cut if values.size else np.zeros(0, dtype=bool)
        timings['threshold'] = time.perf_counter() - mark

        report('cluster')
        mark = time.perf_counter()
        clusters = self._clusters(values, values_device, selected, cut, limit) if cluster else []
        timings['cluster'] = time.perf_counter() - mark
        peak = peak_relevancy(clusters[0], values) if clusters else float('nan')
        status, reason = self._verdict(phrases, values, text_query, clusters, cluster, peak)
        if status != FOUND:
            clusters = []
        report('grasps')
        mark = time.perf_counter()
        self.grasp_planner.occupancy = self.voxels.occupancy
        grasps, grasp_reasons = self.grasp_planner.plan_all(clusters)
        grasps, withheld = grasps_in_cluster_order(grasps, grasp_reasons)
        notes = cluster_notes(clusters, self.voxels.points)
        for index, cluster in enumerate(clusters):
            gap = self.floating.get(id(cluster))
            if gap is not None:
                notes[index] = '; '.join(part for part in (
                    f'floating: {100 * gap:.0f} cm above the support with nothing under most of it (a floater, or '
                    'an object whose underside the field has not formed yet)', notes[index]) if part)
        timings['grasps'] = time.perf_counter() - mark
        timings['total'] = time.perf_counter() - started

        v = self.voxels
        heatmap = Heatmap(points=v.points.copy(), rgb=v.rgb.copy(), relevancy=values, alpha=v.alpha.copy(),
                          selected=selected, voxel_size=q.voxel_size, base_frame=self.config.workspace.base_frame,
                          normals=v.normals())
        text = positives if isinstance(positives, str) else ', '.join(phrases)
        return QueryResult(text=text, positives=phrases, negatives=negatives, status=status, reason=reason,
                           heatmap=heatmap, clusters=clusters, grasps=grasps, grasp_reasons=grasp_reasons,
                           timings=timings, threshold=cut, peak=peak, notes=notes, withheld=withheld)

    def _clusters(self, values: np.ndarray, values_device: torch.Tensor, selected: np.ndarray, threshold: float,
                  limit: int) -> List[Cluster]:
        q = self.config.query
        chosen = np.flatnonzero(selected)
        link = link_voxels(q.cluster_eps, q.voxel_size)
        device_coords = self.voxels.device_coords
        if device_coords is not None and device_coords.is_cuda and len(chosen) > HOST_CLUSTER_MAX_VOXELS:
            mask = torch.from_numpy(selected).to(values_device.device)
            labels = components(device_coords[mask], link).cpu().numpy()
        else:
            labels = components(self.voxels.coords[chosen], link)
        groups = group_indices(labels, q.cluster_min_points)
        standing = [self.on_support(make_cluster(self.voxels.points, values, chosen[group], threshold, q.voxel_size),
                                    values, threshold) for group in groups]
        self.buried = sum(not parts for parts in standing)
        kept = self._seen([part for parts in standing for part in parts])
        grounded = [cluster for cluster, gap in kept if gap is None]
        floating = [(cluster, gap) for cluster, gap in kept if gap is not None]
        # floaters are not reported beside a grounded answer; alone, they are (an object whose underside the field
        # has not formed yet looks the same), noted as floating
        self.floating = {} if grounded else {id(cluster): gap for cluster, gap in floating}
        return rank_clusters(grounded or [cluster for cluster, _ in floating], limit)

    def on_support(self, cluster: Cluster, values: np.ndarray,
                   threshold: float) -> List[Tuple[Cluster, Optional[float]]]:
        """Return [(the cluster cut to what stands on its support, its gap above it if it floats)], or [].

        The support under the cluster's footprint (`support.support_under_box`, the same estimate the grasp
        planner uses) is the table's top face, or the workspace floor. A cluster with fewer than
        ``query.cluster_min_points`` voxels above it lies inside the table and never forms ([]); voxels more than
        `SUPPORT_FUZZ_VOXELS` below an occupancy-read support (the field's surfaces read high) are cut, and so are
        those level with it away from the foot of its body (`_under_body`; unless that leaves fewer than
        ``query.cluster_min_points``), and the box is refitted to the rest. It floats when its lowest voxel is more
        than `FLOAT_GAP` above an occupancy-read support with nothing occupied under most of its footprint (the gap
        is returned; `_clusters` decides). Why not split what the foot cut separates (two objects joined by relevant
        table): tried, a flat object cut into pieces ranked below another group (the ROS scene-change test's banana).
        """
        occupancy, q = self.voxels.occupancy, self.config.query
        if occupancy is None:
            return [(cluster, None)]
        support = support_under_box(occupancy, cluster.centroid, cluster.extent, cluster.rotation,
                                    cluster.top + SUPPORT_CEILING_MARGIN)
        members = cluster.indices
        heights = self.voxels.points[members, 2]
        if np.count_nonzero(heights > support.height) < q.cluster_min_points:
            return []            # nothing of it comes out of the support: it lies inside the table
        floor = support.height - SUPPORT_FUZZ_VOXELS * q.voxel_size if support.source == 'occupancy' else support.height
        above = (heights > floor) & self._under_body(members, heights > support.height + q.voxel_size)
        if not above.all():
            kept = members[above]
            if len(kept) < q.cluster_min_points:   # the foot cut never takes an object away: only its floor goes then
                kept = members[heights > floor]
                if len(kept) < q.cluster_min_points:
                    return []
            cluster = make_cluster(self.voxels.points, values, kept, threshold, q.voxel_size)
        if support.source == 'occupancy' and self._floats(cluster.indices, support.height):
            return [(cluster, float(self.voxels.points[cluster.indices, 2].min() - q.voxel_size / 2 - support.height))]
        return [(cluster, None)]

    def _under_body(self, members: np.ndarray, body: np.ndarray) -> np.ndarray:
        """[len(members)] bool: the voxels to keep of a cluster whose `body` voxels rise clear of its support.

        The voxels level with the support are kept under the body's footprint (grown by one voxel: its foot) and cut
        elsewhere: relevant table around an object is the teacher's patches bleeding onto it, not the object (after
        a move, with the older keyframes masked there, it spread 5-10 cm from the object on one side and pulled the
        centroid 4-5 cm). With fewer body voxels than `query.cluster_min_points` or `MIN_BODY_SHARE` of the cluster (a
        flat object, a banana lying on the table) all are kept: its few top voxels would cut it to pieces.
        """
        if (np.count_nonzero(body) < max(self.config.query.cluster_min_points, MIN_BODY_SHARE * len(body))
                or body.all()):
            return np.ones(len(members), bool)
        cells = self.voxels.coords[members][:, :2] + 1                  # >= 0 with the ring around it
        foot = (cells[body][:, None, :] + FOOT_RING[None]).reshape(-1, 2)
        width = int(cells[:, 1].max()) + 2
        return body | np.isin(cells[:, 0] * width + cells[:, 1], foot[:, 0] * width + foot[:, 1])

    def _seen(self, kept: List[Tuple[Cluster, Optional[float]]]):
        """Drop the clusters of `kept` the keyframes do not bear out (``query.min_support_views``; ghosts noted)."""
        q = self.config.query
        self.ghosts = []
        frames = list(self.keyframes()) if self.keyframes is not None and q.min_support_views > 0 else []
        if not frames:
            return kept
        seen = []
        for cluster, gap in kept:
            support = view_support(self.voxels.points[cluster.indices], frames, q.support_tolerance)
            if support.ghost(q.min_support_views):
                self.ghosts.append(f'the group at {np.round(cluster.centroid, 3).tolist()}: {support.describe()}')
                continue
            seen.append((cluster, gap))
        return seen

    def _floats(self, members: np.ndarray, support: float) -> bool:
        """Tell whether voxels `members` hang above `support` (m) with free space under most of their footprint."""
        q, occupancy = self.config.query, self.voxels.occupancy
        bottom = float(self.voxels.points[members, 2].min()) - q.voxel_size / 2
        if bottom - support <= FLOAT_GAP:
            return False
        coords = self.voxels.coords[members]
        columns = np.unique(coords[:, :2], axis=0)
        lowest = {(int(i), int(j)): int(k) for i, j, k in coords[np.lexsort((-coords[:, 2],))][:, :3]}
        first = int(np.clip(np.floor((support - occupancy.origin[2]) / q.voxel_size + 0.5), 0, occupancy.grid.shape[2]))
        resting = sum(bool(occupancy.grid[i, j, first:lowest[(int(i), int(j))]].any()) for i, j in columns)
        return resting < RESTING_SHARE * len(columns)

    def _verdict(self, phrases: List[str], values: np.ndarray, query: TextQuery, clusters: List[Cluster],
                 clustered: bool, peak: float):
        """(status, reason) of an answer."""
        name = ', '.join(phrases)
        if values.size == 0:
            return NOT_PRESENT, ('the field has no occupied voxels in the workspace yet (is the scan inside '
                                 'workspace.min_xyz/max_xyz, and has the trainer run?)')
        best_value = float(values.max())
        if query.contrastive and best_value <= SOFTMAX_FLOOR + FLOOR_MARGIN:
            return NOT_PRESENT, (f'no voxel is more like {name!r} than like the negatives '
                                 f'(best relevancy {best_value:.3f} <= 0.5)')
        if not clustered:
            return FOUND, f'heatmap only (no clustering); best relevancy {best_value:.3f}'
        if not clusters:
            buried = self.buried
            return NOT_PRESENT, (f'no group of at least {self.config.query.cluster_min_points} relevant voxels '
                                 f'for {name!r} (best relevancy {best_value:.3f})'
                                 + (f'; {buried} group(s) lay inside the table (below the support)' if buried else '')
                                 + (f'; {len(self.ghosts)} group(s) no keyframe bore out ({"; ".join(self.ghosts)})'
                                    if self.ghosts else ''))
        bound = self.present_relevancy
        if peak < bound:
            return NOT_PRESENT, (f'the best match for {name!r} has peak relevancy {peak:.3f}, below '
                                 f'the {bound:.3f} a present object reaches (query.present_relevancy)')
        return FOUND, (f'{len(clusters)} cluster(s); the best at '
                       f'{np.round(clusters[0].centroid, 3).tolist()} with peak relevancy {peak:.3f}')


def _threshold_level(mode: str, value: Optional[float], q) -> float:
    """Return the number a threshold mode needs, checked: percentile 0..100, relevancy value -1..1."""
    if mode not in ('otsu', 'percentile', 'value'):
        raise ValueError(f"threshold mode must be 'otsu', 'percentile' or 'value', got {mode!r}")
    if mode == 'percentile':
        level = q.percentile if value is None else float(value)
        if not (np.isfinite(level) and 0 <= level <= 100):
            raise ValueError(f'a percentile threshold must be 0..100, got {value!r}')
        return level
    if mode == 'value':
        level = q.threshold_value if value is None else float(value)
        if not (np.isfinite(level) and -1 <= level <= 1):
            raise ValueError(f'a relevancy threshold must be -1..1, got {value!r}')
        return level
    return float('nan')


def _open3d():
    """Import open3d on first use (PLY files), so queries also run where it is not installed."""
    try:
        import open3d
    except ImportError as error:
        raise ImportError('open3d is needed for PLY files: pip install open3d-cpu '
                          '(and apt install libusb-1.0-0)') from error
    return open3d


def _quiet(o3d):
    return o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error)


def write_heatmap_ply(path: Union[str, Path], heatmap: Heatmap, color: str = 'relevancy',
                      colormap: str = 'turbo') -> Path:
    """Write the heatmap as a PLY point cloud (open3d): xyz, colour, and per-point ``relevancy`` and ``alpha``.

    `color` is 'relevancy' (through `colormap`) or 'rgb' (the reconstructed colour).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(heatmap) == 0:   # open3d refuses to write an empty cloud: a valid PLY with no points (a faint field)
        path.write_text('ply\nformat binary_little_endian 1.0\nelement vertex 0\nproperty float x\nproperty float y\n'
                        'property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n'
                        'property float relevancy\nproperty float alpha\nend_header\n')
        return path
    o3d = _open3d()
    cloud = o3d.t.geometry.PointCloud()
    cloud.point.positions = o3d.core.Tensor(np.asarray(heatmap.points, dtype=np.float32).reshape(-1, 3))
    colors = heatmap.colors(color, colormap).astype(np.float32).reshape(-1, 3) / 255.0
    cloud.point.colors = o3d.core.Tensor(colors)
    cloud.point.relevancy = o3d.core.Tensor(np.asarray(heatmap.relevancy, dtype=np.float32).reshape(-1, 1))
    cloud.point.alpha = o3d.core.Tensor(np.asarray(heatmap.alpha, dtype=np.float32).reshape(-1, 1))
    with _quiet(o3d):
        ok = o3d.t.io.write_point_cloud(str(path), cloud, write_ascii=False)
    if not ok:
        raise OSError(f'could not write {path}')
    return path


__all__ = ['FOUND', 'NOT_PRESENT', 'Heatmap', 'QueryResult', 'FieldQuerier', 'peak_relevancy', 'write_heatmap_ply',
           'model_device', 'check_request', 'cluster_notes', 'grasps_in_cluster_order', 'MINOR_SHARE']
