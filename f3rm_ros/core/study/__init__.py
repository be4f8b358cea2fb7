"""Study: evaluation, orbit renders, experiments, meshes and reports over a trained field."""
