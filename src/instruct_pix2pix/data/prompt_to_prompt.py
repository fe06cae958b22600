"""Prompt-to-Prompt: an image pair from a caption pair that differs only where the captions differ.

Both images of a pair start from the same noise and share the ancestral noise of every step, so
they would be alike wherever the captions are alike if the model were smooth; it is not, so for the
first fraction p of the steps the second image is made to attend as the first does:

- `self` (the InstructPix2Pix reference, dataset_creation/generate_img_dataset.py): in every
  self-attention layer, the second image's attention scores are replaced by the first image's, in
  both classifier-free-guidance halves, while p > i / (steps - 1) at step i;
- `cross` (the original Prompt-to-Prompt, Hertz et al. 2022, as diffusers' community pipeline does
  it): in the conditional half, the second prompt's cross-attention maps are the first's (word swap,
  "replace", when the two prompts have as many tokens; "refine" otherwise: each token of the second
  prompt takes the map of the token it is aligned with in the first, new tokens keep their own) for
  the first p of the steps (p is the community pipeline's `n_cross_replace`), and its self-attention
  maps in layers of at most 16x16 tokens are the first's for the first `n_self_replace` of the steps.

Replacing the scores before the softmax or the probabilities after it gives the same numbers (the
softmax of equal rows is equal); for self-attention the processors go one step further and give the
second image the first's queries and keys, which is the same again without the attention matrix.
They are diffusers attention processors (`unet.set_attn_processor`); sampling is diffusers' scheduler in a short loop
of our own, since every candidate has its own guidance scale and its own p.

    pairs = sample_pairs(model, [Candidate("a cat", "a dog", seed=1, p=0.5, guidance_scale=9.0)])
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from instruct_pix2pix.errors import UserError
from instruct_pix2pix.images import to_pil
from instruct_pix2pix.prompts import distinct_texts, encode_prompts, prompt_length
from instruct_pix2pix.settings import PAIR_GUIDANCE_RANGE, PAIR_MODES, PAIR_P_RANGE, PAIR_SELF_REPLACE, make_scheduler

MODES = PAIR_MODES
SELF_REPLACE_MAX_TOKENS = 16**2  # the community pipeline replaces self-attention only at 16x16 and below


@dataclass(frozen=True)
class Candidate:
    """One image pair to draw: the captions, the seed of its noise, p and the text guidance scale."""

    input_caption: str
    output_caption: str
    seed: int
    p: float
    guidance_scale: float


def draw_settings(seed: int, p_range=PAIR_P_RANGE, guidance_range=PAIR_GUIDANCE_RANGE) -> tuple[float, float]:
    """p ~ U[p_range] and the guidance scale ~ U[guidance_range], drawn from the candidate's own seed
    (a stream apart from its noise, so that with p = 0 a pair is exactly what a pipeline draws)."""
    rng = np.random.default_rng([seed, 1])
    p = p_range[0] + rng.random() * (p_range[1] - p_range[0])
    guidance = guidance_range[0] + rng.random() * (guidance_range[1] - guidance_range[0])
    return float(p), float(guidance)


# --- attention ------------------------------------------------------------------------------------


@dataclass
class Sharing:
    """What the processors do at the current step, set by the sampler before each UNet call.

    The batch is [unconditional half, conditional half], each half the pairs in order, each pair
    (first image, second image)."""

    mode: str = "self"
    share_self: torch.Tensor | None = None  # (pairs,) bool: pairs whose self-attention is shared now
    share_cross: torch.Tensor | None = None  # (pairs,) bool: pairs whose cross-attention is the first's now
    token_map: torch.Tensor | None = None  # (pairs, tokens) long: the first prompt's token for each of the second's
    token_kept: torch.Tensor | None = None  # (pairs, tokens) float: 1 where the second's token takes the first's map
    self_on: bool = False  # share_self.any(), and share_cross.any(): set with them by `at_step`
    cross_on: bool = False
    calls: list = field(default_factory=list)  # for tests: (is_self, probabilities) of every call when recording
    record: bool = False

    def at_step(self, share_self: torch.Tensor, share_cross: torch.Tensor | None = None) -> None:
        """Who shares at this step. The processors branch on the two flags, plain Python values set
        here once a step, not on the tensors: a compiled UNet then traces each branch once instead of
        breaking its graph in every attention layer."""
        self.share_self, self.share_cross = share_self, share_cross
        self.self_on = bool(share_self.any())
        self.cross_on = share_cross is not None and bool(share_cross.any())


def _pairs(x: torch.Tensor, batch: int) -> torch.Tensor:
    """A batch-major tensor (batch [* heads], ...) as (2 halves, pairs, 2 images, ...), a view."""
    return x.view(2, batch // 4, 2, -1, *x.shape[1:])


class SharedAttentionProcessor:
    """A diffusers attention processor that applies `Sharing`.

    Shared self-attention needs no attention matrix: softmax(q1 k1^T) v2 is scaled-dot-product
    attention with the first image's queries and keys and the second's values, so the second image's
    queries and keys are replaced by the first's and PyTorch's fused attention runs as usual (at SD's
    4096 tokens the matrices would be gigabytes). Cross-attention (77 keys) is mapped token by token on
    explicit probabilities. With `sharing.record`, every call computes explicit probabilities, shares
    them and records them, which is what the tests look at."""

    def __init__(self, sharing: Sharing):
        self.sharing = sharing

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch, tokens, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        is_self = encoder_hidden_states is None
        context = hidden_states if is_self else encoder_hidden_states
        if not is_self and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        active = self._active(is_self, tokens)

        if self.sharing.record or (active and not is_self):
            mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            q, k, v = (attn.head_to_batch_dim(x) for x in (query, key, value))
            probabilities = attn.get_attention_scores(q, k, mask)  # softmax(q k^T * scale), (batch * heads, q, k)
            if active:
                probabilities = (self._share_self if is_self else self._share_cross)(probabilities, batch)
            if self.sharing.record:
                self.sharing.calls.append((is_self, probabilities.detach().clone()))
            hidden_states = attn.batch_to_head_dim(torch.bmm(probabilities, v))
        else:
            mask = None
            if attention_mask is not None:
                mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
                mask = mask.view(batch, attn.heads, -1, mask.shape[-1])
            head = query.shape[-1] // attn.heads
            q, k, v = (x.view(batch, -1, attn.heads, head).transpose(1, 2) for x in (query, key, value))
            if active:  # self-attention: the second image attends with the first's queries and keys
                q, k = self._share_self(q, batch), self._share_self(k, batch)
            hidden_states = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
            hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head).to(q.dtype)

        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _active(self, is_self: bool, tokens: int) -> bool:
        s = self.sharing
        if is_self:
            return s.self_on and (s.mode == "self" or tokens <= SELF_REPLACE_MAX_TOKENS)
        return s.mode == "cross" and s.cross_on

    def _share_self(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """The second image's rows replaced by the first's for the sharing pairs, in both halves
        (`self`, the reference's) or the conditional half (`cross`); x is batch-major."""
        s = self.sharing
        pairs = _pairs(x, batch).clone()
        chosen = s.share_self.view(-1, *[1] * (pairs.dim() - 3))
        for half in range(2) if s.mode == "self" else (1,):
            pairs[half, :, 1] = torch.where(chosen, pairs[half, :, 0], pairs[half, :, 1])
        return pairs.view_as(x)

    def _share_cross(self, probabilities: torch.Tensor, batch: int) -> torch.Tensor:
        """The conditional half's cross-attention of the second prompt: each of its tokens takes the
        map of the first prompt's token it is aligned with (word swap / refine)."""
        s = self.sharing
        pairs = _pairs(probabilities, batch).clone()
        first, second = pairs[1, :, 0], pairs[1, :, 1]  # (pairs, heads, q, tokens)
        index = s.token_map[:, None, None, :].expand_as(first)
        kept = s.token_kept[:, None, None, :].to(first.dtype)
        mapped = torch.gather(first, -1, index) * kept + second * (1 - kept)
        pairs[1, :, 1] = torch.where(s.share_cross[:, None, None, None], mapped, second)
        return pairs.view_as(probabilities)


@contextmanager
def attention_sharing(unet, sharing: Sharing):
    """The UNet's attention processors replaced by sharing ones for the duration, then restored."""
    before = unet.attn_processors
    unet.set_attn_processor(SharedAttentionProcessor(sharing))
    try:
        yield sharing
    finally:
        unet.set_attn_processor(before)


def token_alignment(tokenizer, first: str, second: str, length: int) -> tuple[list[int], list[float]]:
    """For each token position of `second` (padded to `length`): the position in `first` whose map it
    takes, and 1.0 if it takes it (0.0 for words new in `second`). Word swap ("replace": as many
    tokens) maps position to position; otherwise ("refine") matching runs of tokens are aligned and
    the start and end tokens and the padding map to themselves."""
    ids = [tokenizer(text, truncation=True, max_length=length).input_ids for text in (first, second)]
    mapping, kept = list(range(length)), [1.0] * length
    if len(ids[0]) == len(ids[1]):
        return mapping, kept
    for j in range(1, len(ids[1]) - 1):  # words of the second prompt: new unless aligned
        kept[j] = 0.0
    matcher = difflib.SequenceMatcher(a=ids[0][1:-1], b=ids[1][1:-1], autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            mapping[1 + block.b + k], kept[1 + block.b + k] = 1 + block.a + k, 1.0
    for j in range(len(ids[1]) - 1, length):  # the end token and padding after it: the first's end and padding
        mapping[j] = min(len(ids[0]) - 1 + (j - len(ids[1]) + 1), length - 1)
    return mapping, kept


# --- sampling -------------------------------------------------------------------------------------


@torch.inference_mode()
def sample_pairs(
    model,
    candidates: Sequence[Candidate],
    *,
    mode: str = "self",
    num_inference_steps: int = 100,
    scheduler: str = "euler_ancestral",
    n_self_replace: float = PAIR_SELF_REPLACE,
    device: torch.device | str = "cpu",
    sharing: Sharing | None = None,
) -> list[tuple[Image.Image, Image.Image]]:
    """Draw each candidate's image pair in one batched sampling pass; returns (first, second) images.

    `mode` "self" shares self-attention for the first p of the steps (each candidate's own p); "cross"
    is the original Prompt-to-Prompt, each candidate's p its `n_cross_replace` (the share of steps
    whose cross-attention is replaced) and `n_self_replace` the share whose self-attention is. A
    candidate with p = 0 gives exactly the two images diffusers' StableDiffusionPipeline draws for
    its captions, seed and guidance scale."""
    if mode not in MODES:
        raise UserError(f"unknown attention sharing mode {mode!r}; use self or cross")
    unet, vae = model.unet, model.vae
    dtype, count = unet.dtype, len(candidates)
    captions = [text for c in candidates for text in (c.input_caption, c.output_caption)]
    length = prompt_length(model.tokenizer, model.text_encoder)
    distinct, rows = distinct_texts(captions)  # an edit's candidates share its two captions
    conditional = encode_prompts(model.tokenizer, model.text_encoder, distinct, device).to(dtype)[rows]
    unconditional = encode_prompts(model.tokenizer, model.text_encoder, [""], device).to(dtype)
    context = torch.cat([unconditional.expand(2 * count, -1, -1), conditional])

    sampler = make_scheduler(scheduler, model.scheduler_config)
    sampler.set_timesteps(num_inference_steps, device=device)
    # Two generators of the same seed per pair: the same starting noise and the same ancestral noise.
    generators = [torch.Generator("cpu").manual_seed(c.seed) for c in candidates for _ in range(2)]
    size = model.default_resolution // model.vae_scale_factor
    shape = (2 * count, unet.config.in_channels, size, size)
    latents = randn_tensor(shape, generator=generators, device=torch.device(device), dtype=dtype)
    latents = latents * sampler.init_noise_sigma
    step_kwargs = {"generator": generators} if "generator" in inspect.signature(sampler.step).parameters else {}
    guidance = torch.tensor([c.guidance_scale for c in candidates for _ in range(2)], device=device, dtype=dtype)
    p = torch.tensor([c.p for c in candidates], device=device)

    sharing = sharing or Sharing()
    sharing.mode = mode
    if mode == "cross":
        alignments = [token_alignment(model.tokenizer, c.input_caption, c.output_caption, length) for c in candidates]
        sharing.token_map = torch.tensor([a[0] for a in alignments], device=device)
        sharing.token_kept = torch.tensor([a[1] for a in alignments], device=device)
    steps = len(sampler.timesteps)
    with attention_sharing(unet, sharing):
        for i, t in enumerate(sampler.timesteps):
            if mode == "self":  # the reference's test: p > i / (len(sigmas) - 2), with len(sigmas) = steps + 1
                sharing.at_step(p > i / max(steps - 1, 1))
            else:  # the community pipeline's: replace while the step is below int(steps * fraction)
                sharing.at_step(torch.full_like(p, n_self_replace * steps > i, dtype=torch.bool), p * steps > i)
            model_input = sampler.scale_model_input(torch.cat([latents, latents]), t)
            noise = unet(model_input, t, encoder_hidden_states=context, return_dict=False)[0]
            uncond, cond = noise.chunk(2)
            noise = uncond + guidance[:, None, None, None] * (cond - uncond)
            latents = sampler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
    decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    images = to_pil(decoded.float())
    return [(images[2 * k], images[2 * k + 1]) for k in range(count)]
