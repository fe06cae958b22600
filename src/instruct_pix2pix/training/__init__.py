"""Training an editing model: `ip2p train CONFIG.yaml [key=value ...]`, or on many GPUs
`accelerate launch -m instruct_pix2pix.training CONFIG.yaml [key=value ...]`."""

from instruct_pix2pix.training.config import TrainConfig, load_config


def __getattr__(name: str):
    # The loop (torch, accelerate) is imported when first used: configs are checked before that.
    if name == "train":
        from instruct_pix2pix.training.trainer import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TrainConfig", "load_config", "train"]
