"""How an edit is measured: the paper's CLIP similarities, and MagicBrush's metrics against a target.

The paper (its comparison figure) scores an edit input image I0 -> output image I1 for the
captions T0 (input) and T1 (edited) with CLIP features, each L2-normalised:

    image similarity        cos(I0, I1)             how much of the input is kept
    direction similarity    cos(I1 - I0, T1 - T0)   whether the change follows the change of caption
    caption similarities    cos(I0, T0), cos(I1, T1)

Images go to CLIP in [0, 1], prepared as the model's own CLIP processor does (resize the short
side, centre-crop, CLIP's mean and std), or as the reference evaluation does (`resize="bicubic"`:
a bicubic resize of the whole image to the model's square, no crop). The reference fed its images
in [-1, 1] although its comment says [0, 1]; that is a bug and is not copied (README, "Evaluation").

With a target image (datasets that hold the right edit, as MagicBrush does): L1 and L2 (mean
absolute and mean squared difference on [0, 1], the output resized to the target), CLIP-I
(cos of the two images' CLIP features), CLIP-T (cos of the output and the target caption) and DINO
(cos of the two images' DINO class-token features).

One `ClipScorer` serves `ip2p evaluate`, the image stage's CLIP filter and the small world.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from instruct_pix2pix.errors import UserError
from instruct_pix2pix.images import unit_pixels
from instruct_pix2pix.loading.sources import DEFAULT_CLIP  # the small world's CLIP
from instruct_pix2pix.prompts import distinct_texts
from instruct_pix2pix.settings import REFERENCE_CLIP

RESIZES = ("processor", "bicubic")
DINO_TYPES = ("vit", "dinov2", "dinov2_with_registers")


def _load_config(source: str | Path, what: str, types: Sequence[str], example: str):
    """The config of a transformers model folder or hub id, checked to be one of `types`."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot load {what} {source}: {reason}; give a transformers folder or hub id such as "
                        f"{example}") from None  # fmt: skip
    if config.model_type not in types:
        raise UserError(f"{source} is not a {what} (its config says model_type {config.model_type!r}); give a "
                        f"{what} such as {example}")  # fmt: skip
    return config


def _features(output) -> torch.Tensor:
    """transformers' get_*_features return a tensor, or (newer versions) an output with the pooled features."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise cosine similarity; 0 where a row is all zeros (an output identical to its input)."""
    return F.cosine_similarity(a, b, dim=-1).clamp(-1, 1).numpy().astype(np.float64)


class ClipScorer:
    """CLIP features of images and texts, and the paper's similarities between them.

    >>> scorer = ClipScorer.from_pretrained("openai/clip-vit-large-patch14", device="cuda")
    >>> scorer.edit_similarities([before], [after], ["a photo of a cat"], ["a photo of a dog"])
    """

    def __init__(self, model, image_processor, tokenizer, *, resize: str = "processor", device="cpu",
                 batch_size: int = 64):  # fmt: skip
        if resize not in RESIZES:
            raise UserError(f"unknown CLIP resize {resize!r}; use {' or '.join(RESIZES)}")
        self.model = model.to(device).eval()
        self.image_processor, self.tokenizer = image_processor, tokenizer
        self.resize, self.device, self.batch_size = resize, torch.device(device), batch_size
        self.image_size = model.config.vision_config.image_size
        self.mean = torch.tensor(image_processor.image_mean)[:, None, None]
        self.std = torch.tensor(image_processor.image_std)[:, None, None]

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, *, resize: str = "processor", device="cpu",
                        batch_size: int = 64, dtype: torch.dtype | None = None) -> ClipScorer:  # fmt: skip
        """A transformers CLIP folder or hub id (default: the small world's CLIP shipped in the package),
        in `dtype`: float32 unless given, the reference's precision, whatever the checkpoint is stored in
        (transformers would keep the shipped CLIP's float16, which CPUs run 7x slower); features come
        back in float32 either way."""
        from instruct_pix2pix.loading import no_torchvision_warnings

        source = str(source or DEFAULT_CLIP)
        _load_config(source, "CLIP model", ("clip",), REFERENCE_CLIP)
        with no_torchvision_warnings():
            from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

            # safetensors first; .bin only through weights_only
            model = CLIPModel.from_pretrained(source, dtype=dtype or torch.float32)
            processor = CLIPImageProcessor.from_pretrained(source)
            tokenizer = AutoTokenizer.from_pretrained(source)
        return cls(model, processor, tokenizer, resize=resize, device=device, batch_size=batch_size)

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if self.resize == "processor":
            return self.image_processor(images=[image.convert("RGB") for image in images],
                                        return_tensors="pt").pixel_values  # fmt: skip
        size = (self.image_size, self.image_size)
        resized = [F.interpolate(p[None], size=size, mode="bicubic", align_corners=False)[0]
                   for p in unit_pixels(images)]  # fmt: skip
        return (torch.stack(resized) - self.mean) / self.std

    @torch.inference_mode()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) unit-length features, on the CPU."""
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.pixel_values(images[start : start + self.batch_size]).to(self.device, self.model.dtype)
            out.append(F.normalize(_features(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1))
        return torch.cat(out).cpu() if out else torch.zeros(0, self.model.config.projection_dim)

    @torch.inference_mode()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) unit-length features, on the CPU; texts longer than CLIP reads are cut, as CLIP does.
        Each distinct text is encoded once (a batch of candidates shares its two captions)."""
        distinct, rows = distinct_texts(texts)
        out = []
        for start in range(0, len(distinct), self.batch_size):
            tokens = self.tokenizer(distinct[start : start + self.batch_size], padding=True, truncation=True,
                                    max_length=self.model.config.text_config.max_position_embeddings,
                                    return_tensors="pt").to(self.device)  # fmt: skip
            features = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            out.append(F.normalize(_features(features).float(), dim=-1))
        return torch.cat(out).cpu()[rows] if out else torch.zeros(0, self.model.config.projection_dim)

    def edit_similarities(self, inputs, outputs, input_captions, output_captions) -> dict[str, np.ndarray]:
        """The paper's four similarities for each edit inputs[i] -> outputs[i]."""
        return similarities(self.image_features(inputs), self.image_features(outputs),
                            self.text_features(input_captions), self.text_features(output_captions))  # fmt: skip


def similarities(input_features, output_features, input_text_features, output_text_features) -> dict[str, np.ndarray]:
    """The paper's similarities from unit-length features (rows: edits); features of inputs and
    captions can be computed once and shared by every point of a sweep."""
    return {
        "clip_image": cosine(input_features, output_features),
        "clip_direction": cosine(output_features - input_features, output_text_features - input_text_features),
        "clip_input_caption": cosine(input_features, input_text_features),
        "clip_output_caption": cosine(output_features, output_text_features),
    }


class DinoScorer:
    """DINO (ViT) or DINOv2 class-token features, for the similarity of an output to its target."""

    def __init__(self, model, image_processor, *, device="cpu", batch_size: int = 64):
        self.model, self.image_processor = model.to(device).eval(), image_processor
        self.device, self.batch_size = torch.device(device), batch_size

    @classmethod
    def from_pretrained(cls, source: str | Path, *, device="cpu", batch_size: int = 64) -> DinoScorer:
        """A transformers folder or hub id: facebook/dino-vits16 (MagicBrush's), facebook/dinov2-small, ..."""
        from instruct_pix2pix.loading import no_torchvision_warnings

        _load_config(source, "DINO model", DINO_TYPES, "facebook/dino-vits16")
        with no_torchvision_warnings():
            from transformers import AutoImageProcessor, AutoModel

            model = AutoModel.from_pretrained(str(source), dtype=torch.float32)  # as CLIP: float32 whatever is stored
            processor = AutoImageProcessor.from_pretrained(str(source))
        return cls(model, processor, device=device, batch_size=batch_size)

    @torch.inference_mode()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = []
        for start in range(0, len(images), self.batch_size):
            part = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            pixels = self.image_processor(images=part, return_tensors="pt").pixel_values.to(self.device)
            # The class token after the final layer norm, as DINO's own models return it (the
            # pooler of transformers' ViTModel is an extra layer DINO never trained).
            cls_token = self.model(pixel_values=pixels.to(self.model.dtype)).last_hidden_state[:, 0]
            out.append(F.normalize(cls_token.float(), dim=-1))
        return torch.cat(out).cpu()


def pixel_distances(outputs: Sequence[Image.Image], targets: Sequence[Image.Image]) -> dict[str, np.ndarray]:
    """L1 and L2 (mean squared) on [0, 1] per pair, each output resized (bicubic) to its target's size."""
    l1, l2 = [], []
    for output, target in zip(outputs, targets):
        if output.size != target.size:
            output = output.convert("RGB").resize(target.size, Image.Resampling.BICUBIC)
        difference = unit_pixels([output])[0] - unit_pixels([target])[0]
        l1.append(difference.abs().mean().item())
        l2.append(difference.square().mean().item())
    return {"target_l1": np.array(l1), "target_l2": np.array(l2)}


def target_metrics(outputs, targets, target_captions=None, *, clip: ClipScorer, dino: DinoScorer | None = None,
                   output_features=None, target_features=None) -> dict[str, np.ndarray]:  # fmt: skip
    """MagicBrush's metrics of each output against its target (L1, L2, CLIP-I, CLIP-T when the
    target captions are given, DINO when a DINO scorer is); features already computed can be passed."""
    output_features = clip.image_features(outputs) if output_features is None else output_features
    target_features = clip.image_features(targets) if target_features is None else target_features
    values = {**pixel_distances(outputs, targets), "target_clip_i": cosine(output_features, target_features)}
    if target_captions is not None:
        values["target_clip_t"] = cosine(output_features, clip.text_features(target_captions))
    if dino is not None:
        values["target_dino"] = cosine(dino.image_features(outputs), dino.image_features(targets))
    return values
