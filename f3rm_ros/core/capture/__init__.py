"""Capture: the keyframe gate, the frame store on disk, lens distortion, compressed codecs, pose sources."""
