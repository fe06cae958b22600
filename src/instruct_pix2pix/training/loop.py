"""The small training loop the pretraining recipes and language-model fine-tuning share.

    fit(kind, output_dir, model, step_loss, arguments=..., steps=..., learning_rate=..., seed=...)

AdamW over the parameters that require grad, linear warmup then cosine decay, gradient clipping,
and a checkpoint (`output_dir/checkpoint.pt`, written atomically every `checkpoint_every` steps)
holding the trained parameters, the optimizer and every random state. Called again with the same
arguments it resumes from there and ends with the same weights as a run never interrupted, as long
as `step_loss(step, generator)` depends only on the step, the generator and the model.
(The editing trainer, with accelerate, EMA and data loaders, is `training.trainer`.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from instruct_pix2pix.atomic import atomic_path
from instruct_pix2pix.errors import UserError

CHECKPOINT = "checkpoint.pt"


def learning_rate_at(step: int, steps: int, peak: float) -> float:
    """Linear warmup over the first 5% of steps (at most 100), then cosine decay to a tenth of the peak."""
    warmup = max(1, min(100, steps // 20))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _random_states() -> dict:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_random_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's groups for the parameters of `model` that require grad: `weight_decay` on matrices and
    convolution kernels; none on embeddings, norms, biases or CLIP's temperature. Embeddings are found
    by module as well as by name (GPT-2's `wte`/`wpe` and Llama's `embed_tokens` are not called so;
    a tied output layer is its embedding)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}

    def decays(name: str, parameter: torch.Tensor) -> bool:
        return parameter.ndim >= 2 and "embedding" not in name and id(parameter) not in embeddings

    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in trained if decays(n, p)], "weight_decay": weight_decay},
        {"params": [p for n, p in trained if not decays(n, p)], "weight_decay": 0.0},
    ]


def fit(
    kind: str,
    output_dir: Path,
    model: torch.nn.Module,
    step_loss: Callable[[int, torch.Generator], torch.Tensor],
    *,
    arguments: dict,
    steps: int,
    learning_rate: float,
    seed: int,
    checkpoint_every: int,
    progress: bool,
    weight_decay: float,
    betas: tuple[float, float],
    after_step: Callable[[], None] = lambda: None,
) -> dict:
    """Train `model` for `steps` steps of `step_loss`, resuming from output_dir's checkpoint.

    Weight decay as `parameter_groups` says. Only parameters that require grad are trained and
    checkpointed (a LoRA checkpoint holds the adapters, not the frozen model).

    Returns {"loss": mean loss of the last steps, "train_seconds": ...}.
    """
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=learning_rate, betas=betas, eps=1e-6)
    generator = torch.Generator().manual_seed(seed)
    step, losses, seconds = 0, [], 0.0
    checkpoint_path = Path(output_dir) / CHECKPOINT
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=True, map_location="cpu")
        if state["kind"] != kind or state["arguments"] != arguments:
            raise UserError(
                f"{checkpoint_path} comes from a run with other settings ({state['kind']}, {state['arguments']}); "
                "use those settings to resume, or another output_dir"
            )
        with torch.no_grad():
            for name, value in state["parameters"].items():
                trained[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        _set_random_states(state["random"])
        generator.set_state(state["generator"])
        step, losses, seconds = state["step"], state["losses"], state["train_seconds"]

    def save_checkpoint():
        state = {
            "kind": kind,
            "arguments": arguments,
            "step": step,
            "parameters": {name: p.detach().cpu() for name, p in trained.items()},
            "optimizer": optimizer.state_dict(),
            "random": _random_states(),
            "generator": generator.get_state(),
            "losses": losses,
            "train_seconds": seconds,
        }
        with atomic_path(checkpoint_path) as temporary:  # a kill leaves the old checkpoint or the new one
            torch.save(state, temporary)

    model.train()
    bar = tqdm(total=steps, initial=step, disable=not progress, desc=f"training {kind}", unit="step")
    started = time.perf_counter()
    while step < steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, steps, learning_rate)
        loss = step_loss(step, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(trained.values()), 1.0)
        optimizer.step()
        after_step()
        step += 1
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.update()
        if step % checkpoint_every == 0 or step == steps:
            seconds += time.perf_counter() - started
            started = time.perf_counter()
            save_checkpoint()
    bar.close()
    model.eval()
    recent = losses[-max(1, min(50, len(losses) // 10)) :]
    return {"loss": sum(recent) / len(recent), "train_seconds": round(seconds, 1)}
