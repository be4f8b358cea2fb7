"""Answers that hold while the table changes: detect a change online, repair the field, say what changed.

* `detect`: one keyframe against the field's render of its pose. Pixels that disagree beyond noise are lifted to
  3D (the keyframe's depth where it says "something is here now", the field's rendered depth where it says
  "something was here") and mark voxels of a coarse grid over the workspace as changed (`ChangeMap`).
* `tracker`: `ChangeTracker` keeps the changed voxels and the change events (`SceneChange`), groups the
  detections of one rescan into one change (an episode), and works out which pixels of the keyframes taken
  before a change saw the changed voxels (`pixels_through`): those stop supervising (their masks), so the field
  relearns the region from the new views. A declared change ("I picked from this box") does the same from a box.

`training.repair.SceneRepair` (the online session's) calls the tracker after every sync of new keyframes and applies
its masks to the trainer; the nodes only translate (``~/scene_changes``, ``~/declare_change``).
"""
