"""Diagnostic trial (not a recipe): does the world's text-to-image model place objects once its
attention knows where it is? A UNet2DConditionModel has no positional embedding; its only sense of
place comes from the convolutions' zero padding. Here every transformer block of the UNet gets a
fixed 2D sine-cosine embedding of its token's (row, column) added to its input, as patch-based
diffusion transformers (DiT, PixArt) have, then t2i_trial.py runs as usual.

    python benchmarks/trials/t2i_position_trial.py OUTPUT_DIR 500,1000 [key=value ...]

A model trained this way needs the same patch to sample: it is a measurement, not a shippable model.
"""

import math
import runpy
import sys

import torch
from diffusers.models.attention import BasicTransformerBlock

_original = BasicTransformerBlock.forward


def position_embedding(side: int, dim: int) -> torch.Tensor:
    """(side * side, dim): half the channels encode the row, half the column, sines and cosines."""
    quarter = dim // 4
    # wavelengths from twice the side (smooth across the image) down to two tokens
    frequencies = (math.pi / side) * (side / 2) ** (torch.arange(quarter) / max(1, quarter - 1))
    index = torch.arange(side, dtype=torch.float32)
    rows, cols = torch.meshgrid(index, index, indexing="ij")
    parts = [f(a.reshape(-1, 1) * frequencies) for a in (rows, cols) for f in (torch.sin, torch.cos)]
    return torch.cat(parts, 1)


def forward(self, hidden_states, *args, **kwargs):
    tokens, dim = hidden_states.shape[1], hidden_states.shape[2]
    side = math.isqrt(tokens)
    if side * side == tokens and dim % 4 == 0:
        hidden_states = hidden_states + position_embedding(side, dim).to(hidden_states)
    return _original(self, hidden_states, *args, **kwargs)


BasicTransformerBlock.forward = forward
if __name__ == "__main__":
    sys.argv = [sys.argv[0].replace("t2i_position_trial", "t2i_trial"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
