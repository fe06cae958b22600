"""The small world: procedural scenes with exact ground truth for every edit, and its miniature models."""

from instruct_pix2pix.small_world.edits import KINDS, PHRASINGS, WorldEdit, make_edit, sample_edits, vocabulary
from instruct_pix2pix.small_world.scenes import Scene, Thing, caption, render, sample_scene

__all__ = [
    "KINDS", "PHRASINGS", "Scene", "Thing", "WorldEdit", "caption", "make_edit", "render", "sample_edits",
    "sample_scene", "vocabulary",
]  # fmt: skip
