"""Training an editing model: `ip2p train CONFIG.yaml [key=value ...]`, or on many GPUs
`accelerate launch -m instruct_pix2pix.training CONFIG.yaml [key=value ...]`."""

from instruct_pix2pix.training.config import TrainConfig, load_config
from instruct_pix2pix.training.trainer import train

__all__ = ["TrainConfig", "load_config", "train"]
