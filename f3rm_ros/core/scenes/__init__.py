"""Scenes: synthetic tables with ground truth (objects, parts, demonstrations) for demos, tests and benches."""
