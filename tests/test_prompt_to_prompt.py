"""Prompt-to-Prompt pairs on tiny components: against diffusers' pipeline, and the attention it shares."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from instruct_pix2pix.data.prompt_to_prompt import (
    Candidate,
    Sharing,
    attention_sharing,
    draw_settings,
    sample_pairs,
    token_alignment,
)
from instruct_pix2pix.loading import TEXT_TO_IMAGE, load_model

STEPS = 6


@pytest.fixture(scope="module")
def t2i(text_to_image_model_dir):
    return load_model(text_to_image_model_dir, kind=TEXT_TO_IMAGE)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=int)


def test_with_p_zero_each_image_is_what_the_pipeline_draws(t2i):
    from instruct_pix2pix.loading import diffusers_pipeline
    from instruct_pix2pix.settings import make_scheduler

    candidates = [Candidate("a red circle", "a blue square", seed=11, p=0.0, guidance_scale=9.0),
                  Candidate("make it snowy", "add fireworks", seed=12, p=0.0, guidance_scale=7.5)]  # fmt: skip
    pairs = sample_pairs(t2i, candidates, num_inference_steps=STEPS)
    pipe = diffusers_pipeline(t2i, make_scheduler("euler_ancestral", t2i.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    for candidate, pair in zip(candidates, pairs):
        for caption, ours in zip((candidate.input_caption, candidate.output_caption), pair):
            theirs = pipe(caption, num_inference_steps=STEPS, guidance_scale=candidate.guidance_scale,
                          generator=torch.Generator("cpu").manual_seed(candidate.seed)).images[0]  # fmt: skip
            assert np.abs(pixels(theirs) - pixels(ours)).max() <= 1


@pytest.mark.parametrize("mode", ["self", pytest.param("cross", marks=pytest.mark.slow)])
def test_a_compiled_unet_shares_at_the_steps_the_flags_say(t2i, mode):
    """The processors branch on flags set once a step: a compiled UNet must follow them, not keep the
    branch of the step it was traced at. Steps with sharing off, on, then off again, against eager
    calls (the on branch with no pair chosen computes what the off branch does, so the graph that must
    not stay is one traced with sharing off)."""
    unet, pairs = t2i.unet, 2
    torch.manual_seed(0)
    latents = torch.randn(4 * pairs, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    context = torch.randn(4 * pairs, 8, unet.config.cross_attention_dim)
    sharing = Sharing(mode=mode, token_map=torch.arange(8).flip(0).expand(pairs, 8), token_kept=torch.ones(pairs, 8))
    compiled = t2i.compiled().unet
    outputs = {}
    with torch.inference_mode(), attention_sharing(unet, sharing):
        for step, on in enumerate((False, True, False)):
            flags = torch.tensor([on, False])
            sharing.at_step(flags, flags if mode == "cross" else None)
            for name, net in (("eager", unet), ("compiled", compiled)):
                outputs[name, step] = net(latents, 500, encoder_hidden_states=context).sample
    for step in range(3):
        torch.testing.assert_close(outputs["compiled", step], outputs["eager", step], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(outputs["eager", 0], outputs["eager", 1], atol=1e-3)  # sharing shows


def test_identical_captions_give_identical_images(t2i):
    for p in (0.0, 1.0):
        (first, second), = sample_pairs(t2i, [Candidate("a red circle", "a red circle", 3, p, 8.0)],
                                        num_inference_steps=STEPS)  # fmt: skip
        assert np.array_equal(pixels(first), pixels(second))


def test_self_attention_is_shared_for_the_first_p_of_the_steps(t2i):
    """Recorded in every attention call: while p > i / (steps - 1) the second image's self-attention
    equals the first's in both guidance halves; after, it does not; cross-attention is never touched."""
    sharing = Sharing(record=True)
    p = 0.5  # steps 0, 1, 2 of 6 share (0.5 > i / 5)
    sample_pairs(t2i, [Candidate("a red circle", "a blue square", 5, p, 8.0)], num_inference_steps=STEPS,
                 sharing=sharing)  # fmt: skip
    per_step = len(sharing.calls) // STEPS
    for step in range(STEPS):
        for is_self, probabilities in sharing.calls[step * per_step : (step + 1) * per_step]:
            pairs = probabilities.view(2, 1, 2, -1, *probabilities.shape[1:])
            same = [torch.equal(pairs[half, 0, 0], pairs[half, 0, 1]) for half in range(2)]
            if is_self:
                assert same == [p > step / (STEPS - 1)] * 2, (step, same)
            else:
                assert not same[1]  # different captions, different cross-attention


def test_cross_mode_replaces_the_conditional_cross_attention(t2i):
    """Word swap: as many tokens, so the second prompt's cross-attention maps are the first's in the
    conditional half for the first p of the steps, and the unconditional half is left alone."""
    sharing = Sharing(record=True)
    sample_pairs(t2i, [Candidate("a red circle", "a blue circle", 5, 0.5, 8.0)], mode="cross",
                 num_inference_steps=STEPS, n_self_replace=0.0, sharing=sharing)  # fmt: skip
    per_step = len(sharing.calls) // STEPS
    for step in range(STEPS):
        for is_self, probabilities in sharing.calls[step * per_step : (step + 1) * per_step]:
            pairs = probabilities.view(2, 1, 2, -1, *probabilities.shape[1:])
            if not is_self:
                assert torch.equal(pairs[1, 0, 0], pairs[1, 0, 1]) == (step < 0.5 * STEPS)
                # the unconditional half has the same empty prompt, but its own images: left as it was
                assert not torch.equal(pairs[0, 0, 0], pairs[0, 0, 1]) or step == 0


def test_token_alignment_maps_shared_words_and_marks_new_ones(t2i):
    tokenizer = t2i.tokenizer
    mapping, kept = token_alignment(tokenizer, "a red circle", "a red circle painting", 77)
    # <start> a red circle painting <end>: the first four map to themselves, "painting" is new
    assert mapping[:4] == [0, 1, 2, 3] and kept[:5] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert mapping[5] == 4  # the second's end token takes the first's end token
    same_length = token_alignment(tokenizer, "a red circle", "a blue square", 77)
    assert same_length == (list(range(77)), [1.0] * 77)  # word swap: position to position


def test_settings_come_from_the_seed():
    p, guidance = draw_settings(7)
    assert (p, guidance) == draw_settings(7) and (p, guidance) != draw_settings(8)
    assert 0.1 <= p <= 0.9 and 7.5 <= guidance <= 15


@pytest.mark.parametrize("mode", ["self", "cross"])
def test_shared_queries_and_keys_give_what_shared_probabilities_give(mode):
    """Sampling passes the first image's queries and keys to fused attention instead of building the
    attention matrix; recording builds the matrix and shares it. One attention layer, two pairs (the
    first sharing, the second not): the same outputs, and not those of no sharing."""
    from diffusers.models.attention_processor import Attention

    from instruct_pix2pix.data.prompt_to_prompt import SharedAttentionProcessor

    torch.manual_seed(0)
    layers = {False: Attention(query_dim=32, heads=4, dim_head=8),
              True: Attention(query_dim=32, heads=4, dim_head=8, cross_attention_dim=16)}  # fmt: skip
    hidden = torch.randn(8, 64, 32)  # [uncond, cond] x 2 pairs x (first, second), 8x8 tokens
    context = torch.randn(8, 7, 16)

    def attend(sharing, cross: bool):
        layers[cross].set_processor(SharedAttentionProcessor(sharing))
        with torch.no_grad():
            return layers[cross](hidden, encoder_hidden_states=context if cross else None)

    def sharing(record: bool, on: bool = True):
        sharing = Sharing(mode=mode, record=record, token_map=torch.tensor([[0, 2, 1, 3, 4, 5, 6]] * 2),
                          token_kept=torch.tensor([[1.0, 1, 1, 0, 1, 1, 1]] * 2))  # fmt: skip
        sharing.at_step(torch.tensor([on, False]), torch.tensor([on, False]))
        return sharing

    for cross in (False, True):
        fast, explicit, plain = (
            attend(sharing(False), cross),
            attend(sharing(True), cross),
            attend(sharing(False, False), cross),
        )
        torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=1e-5)
        changed = (fast - plain).abs().amax(dim=(1, 2)).view(2, 2, 2) > 1e-4  # (half, pair, image)
        shared_halves = [mode == "self" and not cross, True]
        if cross and mode == "self":
            shared_halves = [False, False]  # self mode leaves cross-attention alone
        assert changed[:, 0, 1].tolist() == shared_halves and not changed[:, 1].any() and not changed[:, :, 0].any()
