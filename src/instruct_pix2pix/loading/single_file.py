"""Reading single-file checkpoints in the layout of the original CompVis / InstructPix2Pix code.

That layout is what AUTOMATIC1111 and ComfyUI read (the names: compvis.py). Reading goes through
diffusers' own single-file converters, fed with a state dict that this module reads itself
(safetensors, or a pickled ``.ckpt`` only ever opened with ``torch.load(weights_only=True)``) and
with the component configs of a local diffusers-format folder, so nothing is fetched from the hub.
"""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import torch

from instruct_pix2pix.errors import UserError
from instruct_pix2pix.loading.architecture import inferred_config_dir
from instruct_pix2pix.loading.bundle import EDITING, ModelBundle, check_unet_channels, vae_dtype
from instruct_pix2pix.loading.compvis import CONFIGS_KEY, PREFIXES, UNET_CONV_IN, UNET_PREFIX, to_compvis_state_dict
from instruct_pix2pix.loading.folder import check_folder, first_line, load_tokenizer, read_json, temporary_config_dir

SD15_CONFIG_DIR: Path = Path(__file__).resolve().parents[1] / "configs" / "sd15-instruct-pix2pix"
_PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
# A bare single file (not written by `ip2p export`) says nothing of its architecture but its shapes.
CONFIG_HINT = "; for a model of another size, give its diffusers config folder with --config"


def load_single_file(
    path,
    config_dir=None,
    *,
    kind: str = EDITING,
    dtype: torch.dtype = torch.float32,
    source: str | None = None,
) -> ModelBundle:
    """Build a model bundle from a CompVis-layout checkpoint of the given kind ("editing", "text-to-image", "any").

    ``config_dir`` is a diffusers-format folder without weights (unet/, vae/, text_encoder/ configs,
    tokenizer/ files and scheduler/ config). By default: the configs the file carries (files written
    by `ip2p export`), else the architecture its shapes tell (architecture.py) over the shipped
    configuration of ``timbrooks/instruct-pix2pix``.
    The UNet's input channels are the checkpoint's own, so a text-to-image checkpoint reads with the
    editing model's configs. Keys outside the three model prefixes (``model_ema.*``, optimizer
    leftovers, ...) are ignored.
    """
    path = Path(path)
    state = _read_state_dict(path)
    _check_layout(state, path)
    with config_folder(path, config_dir, {key: tuple(tensor.shape) for key, tensor in state.items()}) as folder:
        return _build(path, state, folder, kind=kind, dtype=dtype, source=source)


def config_folder(path: Path, config_dir, shapes) -> contextlib.AbstractContextManager[Path]:
    """The configs a single file is read with: `config_dir` when given, else those it carries, else
    those its shapes tell (over the SD 1.5 InstructPix2Pix configuration)."""
    if config_dir is not None:
        return contextlib.nullcontext(Path(config_dir))
    carried = carried_configs(path)
    if carried:
        return temporary_config_dir(carried)
    return inferred_config_dir(shapes, SD15_CONFIG_DIR, str(path))


def _build(
    path: Path, state: dict, config_dir: Path, *, kind: str, dtype: torch.dtype, source: str | None
) -> ModelBundle:
    check_folder(config_dir, weights=False, expected="a diffusers model configuration folder (configs and tokenizer)")
    unet_config = read_json(config_dir / "unet" / "config.json")
    vae_config = read_json(config_dir / "vae" / "config.json")
    in_channels = int(state[UNET_CONV_IN].shape[1])
    check_unet_channels(in_channels, vae_config.get("latent_channels", 4), kind, str(path))
    unet_config["in_channels"] = in_channels
    _check_against_config(state, path, config_dir, unet_config)

    # Imported here so that importing this module stays cheap.
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import SingleFileComponentError, create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    # No dtype here: diffusers builds each model on the meta device and fills it from the converted state
    # dict, and a weight the checkpoint lacks stays on meta; asked for a dtype it would then fail to cast
    # without saying which weight. So: load, check that every weight arrived, then cast.
    common = {"config": str(config_dir), "local_files_only": True}
    try:
        with _quiet_diffusers():
            # A state dict (not a path) goes in: diffusers neither reads the file nor looks anything up
            # online, and `config` is a local folder, read with local_files_only.
            unet = UNet2DConditionModel.from_single_file(state, subfolder="unet", in_channels=in_channels, **common)
            vae = AutoencoderKL.from_single_file(state, subfolder="vae", **common)
            # The converter `StableDiffusionPipeline.from_single_file` uses for a CLIP text encoder; it
            # handles both the `text_model.`-wrapped (transformers < 5.6) and the flat CLIPTextModel.
            text_encoder = create_diffusers_clip_model_from_ldm(
                CLIPTextModel, state, subfolder="text_encoder", **common
            )
    except (SingleFileComponentError, ValueError, KeyError, RuntimeError, IndexError) as exc:
        raise UserError(f"{path} does not match the model configuration in {config_dir}: {first_line(exc)}") from None
    del state
    for name, model in {"unet": unet, "vae": vae, "text_encoder": text_encoder}.items():
        _check_fully_loaded(model, name, path)
        with _quiet_diffusers():
            model.to(dtype=vae_dtype(dtype) if name == "vae" else dtype)
    scheduler_config = read_json(config_dir / "scheduler" / "scheduler_config.json")
    return ModelBundle(unet, vae, text_encoder, load_tokenizer(config_dir), scheduler_config, source or str(path))


def carried_configs(path: Path) -> dict | None:
    """The configs a safetensors file written by `ip2p export` carries in its metadata (None: none)."""
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get(CONFIGS_KEY)
        return json.loads(text) if text else None
    except Exception:  # unreadable: the reader proper says why
        return None


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shapes of a checkpoint's model tensors, without reading the tensors (safetensors: the header)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                names = [key for key in handle.keys() if _wanted(key)]  # noqa: SIM118 (not a dict)
                return {key: tuple(handle.get_slice(key).get_shape()) for key in names}
        except Exception as exc:
            raise UserError(f"cannot read {path} as a safetensors checkpoint: {first_line(exc)}") from None
    return {key: tuple(tensor.shape) for key, tensor in _read_state_dict(path).items()}


def conv_in_channels(shapes: dict[str, tuple[int, ...]], path: Path) -> int:
    """conv_in's input channels, from the checkpoint's shapes (see `read_shapes`)."""
    if UNET_CONV_IN not in shapes or len(shapes[UNET_CONV_IN]) != 4:
        raise UserError(f"{path} does not look like a Stable Diffusion checkpoint (no {UNET_CONV_IN})")
    return shapes[UNET_CONV_IN][1]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the three model prefixes, read without running pickled code."""
    if not path.exists():
        raise UserError(f"checkpoint {path} not found")
    if not path.is_file():
        raise UserError(f"{path} is not a file; give a .safetensors or .ckpt checkpoint")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read {path} as a checkpoint: the file is empty")
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return _read_pickle(path)
    return _read_safetensors(path)


def _wanted(key) -> bool:
    return isinstance(key, str) and key.startswith(tuple(PREFIXES.values()))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
            # Reading only the model tensors leaves EMA copies and other extras on disk.
            return {key: handle.get_tensor(key) for key in keys if _wanted(key)}
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
        raise UserError(f"cannot read {path} as a safetensors checkpoint: {first_line(exc)}") from None


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    kwargs = {"map_location": "cpu", "weights_only": True}
    try:
        import zipfile

        if zipfile.is_zipfile(path):
            kwargs["mmap"] = True  # a multi-GB .ckpt is mapped, not copied into memory
        checkpoint = torch.load(path, **kwargs)
    except pickle.UnpicklingError as exc:
        # torch.load(weights_only=True) names the first thing it would not unpickle; garbage fails likewise.
        text = str(exc)
        refused = text[text.find("Unsupported global") :].splitlines()[0] if "Unsupported global" in text else ""
        if not refused:
            raise UserError(f"cannot read {path} as a checkpoint: it is damaged or not a PyTorch checkpoint") from None
        raise UserError(
            f"{path} holds pickled objects other than tensors ({refused.split(' was not ')[0]}), so it is not "
            "loaded: .ckpt files are only read with torch.load(weights_only=True); convert it to .safetensors "
            "with a tool you trust"
        ) from None
    except Exception as exc:
        raise UserError(f"cannot read {path} as a checkpoint: {first_line(exc)}") from None
    # Lightning checkpoints nest the weights under "state_dict".
    while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a state dict of tensors")
    return {key: value for key, value in checkpoint.items() if _wanted(key) and isinstance(value, torch.Tensor)}


def _check_layout(state: dict, path: Path) -> None:
    found = {name for name, prefix in PREFIXES.items() if any(key.startswith(prefix) for key in state)}
    if "unet" not in found:
        raise UserError(
            f"{path} does not look like a Stable Diffusion checkpoint (no '{UNET_PREFIX}*' keys; "
            "the CompVis layout of AUTOMATIC1111 / ComfyUI is expected)"
        )
    missing = [f"{name} ('{PREFIXES[name]}*')" for name in PREFIXES if name not in found]
    if missing:
        raise UserError(f"{path} is an incomplete Stable Diffusion checkpoint: it has no {' and no '.join(missing)}")
    if UNET_CONV_IN not in state or state[UNET_CONV_IN].ndim != 4:
        raise UserError(f"{path} does not look like a Stable Diffusion checkpoint (no UNet input convolution)")


def _check_against_config(state: dict, path: Path, config_dir: Path, unet_config: dict) -> None:
    """Every weight the configured models need is in the checkpoint, with a fitting shape.

    The expected names come from this module's writer, applied to the models built (without memory)
    from the configs. diffusers would otherwise leave a missing weight on the meta device and fail later
    with a message that names nothing.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    try:
        with init_empty_weights(), _quiet_diffusers():
            unet = UNet2DConditionModel.from_config(unet_config)
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(config_dir / "vae")))
            text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder")))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"cannot build the models described in {config_dir}: {first_line(exc)}") from None
    expected = to_compvis_state_dict(unet, vae, text_encoder)
    missing = [key for key in expected if key not in state]
    if missing:
        raise UserError(
            f"{path} does not match the model configuration in {config_dir}: it lacks {len(missing)} of the "
            f"{len(expected)} weights needed (for example {missing[0]}); it is damaged or made for another "
            f"architecture{CONFIG_HINT}"
        )
    for key, tensor in expected.items():
        if not _same_shape(state[key].shape, tensor.shape):
            raise UserError(
                f"{path} does not match the model configuration in {config_dir}: {key} has shape "
                f"{list(state[key].shape)}, the configuration needs {list(tensor.shape)}{CONFIG_HINT}"
            )


def _same_shape(a, b) -> bool:
    # Linear weights stored as 1x1 convolutions (the VAE attention) count as the same shape.
    def strip(shape):
        shape = list(shape)
        while len(shape) > 2 and shape[-1] == 1:
            shape.pop()
        return shape

    return strip(a) == strip(b)


def _check_fully_loaded(model: torch.nn.Module, name: str, path: Path) -> None:
    # diffusers builds models on the meta device and fills them from the state dict: a weight the
    # checkpoint lacks would stay on meta instead of failing, so look for one.
    empty = [param_name for param_name, param in model.named_parameters() if param.is_meta]
    if empty:
        raise UserError(
            f"{path} is missing {len(empty)} {name} weight(s) (for example {empty[0]}); "
            "it is damaged or made for another architecture"
        )


@contextlib.contextmanager
def _quiet_diffusers():
    """Hide diffusers' loading chatter (ignored extra keys, dtype casts); errors still raise."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)
