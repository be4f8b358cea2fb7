"""``f3rm-ros export mesh``: marching cubes on a known field lands on its surfaces; PLY/OBJ; bad input."""
import dataclasses

import numpy as np
import open3d as o3d
import pytest

from f3rm_ros.cli import main
from f3rm_ros.core.study.evaluation import load_for_study
from f3rm_ros.core.geometry import WorkspaceBox
from f3rm_ros.core.study.mesh import auto_voxel_size, extract_mesh, surface_area, write_mesh
from f3rm_ros.core.query.voxels import VoxelField

from analytic_field import SPHERES, analytic_scene
from study_support import tiny_checkpoint, tiny_scene


def test_marching_cubes_finds_the_spheres_of_a_known_field(tmp_path):
    config, teacher, model = analytic_scene(table=False)
    box = WorkspaceBox.from_config(config.workspace)
    mesh = extract_mesh(model, box, config.query, teacher.dim, 0.01)
    vertices = mesh['vertices']
    # every vertex lies on a sphere's surface, within a voxel (the density is a step)
    distance = np.min([np.abs(np.linalg.norm(vertices - c, axis=1) - r) for c, r in SPHERES.values()], axis=0)
    assert distance.max() < 0.01
    for centre, radius in SPHERES.values():
        near = np.linalg.norm(vertices - centre, axis=1) < radius + 0.02
        assert near.sum() > 100
        outward = np.sum(mesh['normals'][near] * (vertices[near] - centre), axis=1)
        assert (outward > 0).mean() > 0.95                       # normals point out of the object
    truth = sum(4 * np.pi * r ** 2 for _, r in SPHERES.values())
    assert truth < surface_area(mesh) < 1.5 * truth               # staircase of 1 cm voxels over a sharp step
    assert mesh['colors'].shape == vertices.shape and 0 <= mesh['colors'].min() <= mesh['colors'].max() <= 1
    # a crop box around one sphere keeps only it
    apple, r = SPHERES['apple']
    cropped = extract_mesh(model, box, config.query, teacher.dim, 0.01, crop=(apple - 0.06, apple + 0.06))
    assert np.all(np.abs(np.linalg.norm(cropped['vertices'] - apple, axis=1) - r) < 0.01)
    for suffix in ('ply', 'obj'):
        path = write_mesh(mesh, tmp_path / f'mesh.{suffix}')
        read = o3d.io.read_triangle_mesh(str(path))
        assert len(read.triangles) == len(mesh['triangles']) and read.has_vertex_colors()
    with pytest.raises(ValueError, match='does not overlap'):
        extract_mesh(model, box, config.query, teacher.dim, 0.01, crop=(np.full(3, 5.0), np.full(3, 6.0)))
    assert auto_voxel_size(box, 0.01) == 0.01
    assert auto_voxel_size(WorkspaceBox(np.zeros(3), np.full(3, 5.12)), 0.01) == pytest.approx(0.02)


@pytest.mark.slow
def test_export_mesh_of_a_checkpoint(tmp_path, capsys):
    scene = tiny_scene()
    checkpoint, _ = tiny_checkpoint(tmp_path / 'a.ckpt', scene, steps=10, rays_per_batch=128)
    model, config, _, _ = load_for_study(checkpoint, 'cpu')
    box = WorkspaceBox.from_config(config.workspace)
    densest = VoxelField(model, box, config.query, config.feature_field.feature_dim).grid_alpha().max()
    # a 10-step field is faint: nothing reaches the default level, which is said clearly ...
    assert main(['export', 'mesh', '--checkpoint', str(checkpoint), '--output', str(tmp_path / 'none')]) == 2
    assert 'no voxel reaches opacity' in capsys.readouterr().err and not (tmp_path / 'none').exists()
    # ... and half the densest opacity gives a mesh
    out = tmp_path / 'mesh'
    assert main(['export', 'mesh', '--checkpoint', str(checkpoint), '--output', str(out), '--format', 'both',
                 '--level', str(densest / 2), '--min-triangles', '0']) == 0
    printed = capsys.readouterr().out
    assert f'mesh: {out / "mesh.ply"}' in printed and f'mesh: {out / "mesh.obj"}' in printed
    read = o3d.io.read_triangle_mesh(str(out / 'mesh.ply'))
    assert len(read.triangles) > 0 and np.all(box.contains(np.asarray(read.vertices) + 0.0))
    assert main(['export', 'mesh', '--checkpoint', str(checkpoint), '--voxel-size', '-1']) == 2


def test_query_crop_keeps_only_the_region_of_interest():
    from f3rm_ros.core.query.answer import FOUND, NOT_PRESENT, FieldQuerier
    config, teacher, model = analytic_scene(table=False)
    apple, _ = SPHERES['apple']
    config.query = dataclasses.replace(config.query, crop_min_xyz=tuple(apple - 0.06), crop_max_xyz=tuple(apple + 0.06))
    querier = FieldQuerier(model, teacher, config)
    assert querier.voxels.grid_shape == (12, 12, 12)
    found = querier.query('apple')
    assert found.status == FOUND and np.linalg.norm(found.clusters[0].centroid - apple) < 0.01
    lo, hi = apple - 0.06, apple + 0.06
    assert np.all((found.heatmap.points >= lo - 1e-6) & (found.heatmap.points <= hi + 1e-6))
    assert querier.query('ball').status == NOT_PRESENT                # the ball is cut away
    with pytest.raises(ValueError, match='does not overlap the workspace'):
        config.query = dataclasses.replace(config.query, crop_min_xyz=(5.0, 5.0, 5.0), crop_max_xyz=(6.0, 6.0, 6.0))
        FieldQuerier(model, teacher, config)
