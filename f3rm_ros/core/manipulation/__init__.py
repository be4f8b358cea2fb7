"""Manipulation: tasks taught by demonstration (F3RM's few-shot grasps and placements), gripper models, pose search."""
