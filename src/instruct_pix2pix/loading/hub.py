"""Models on the Hugging Face hub: fetch only the files the project needs, or find them in the cache."""

from __future__ import annotations

from pathlib import Path

from instruct_pix2pix.errors import UserError

DEFAULT_HUB_ID = "timbrooks/instruct-pix2pix"


def hub_patterns(repo_files: list[str]) -> list[str]:
    """The files the editor needs from a hub repository: configs, tokenizer and one copy of each
    part's weights (safetensors when there are any). Everything else (the multi-GB single-file
    checkpoints at the top level, the safety checker, fp16 variants) is left on the hub."""
    patterns = ["model_index.json", "scheduler/*.json", "tokenizer/*"]
    for part in ("unet", "vae", "text_encoder"):
        weights = [f for f in repo_files if f.startswith(f"{part}/") and f.count(".") == 1]
        has_safetensors = any(f.endswith(".safetensors") for f in weights)
        patterns += [
            f"{part}/*.json",
            *(f for f in weights if f.endswith(".safetensors" if has_safetensors else ".bin")),
        ]
    return patterns


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers at all, in a few seconds (the hub client retries for much longer).
    Behind a proxy a direct connection says nothing, so then it is taken to answer."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def from_cache(repo_id: str, reason: str) -> Path:
    """The copy of `repo_id` in the local hub cache, or a one-line error that says why there is none."""
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True))
    except Exception:
        raise UserError(
            f"cannot download {repo_id!r} from the Hugging Face hub ({reason}) and it is not in the local cache; "
            "download it where there is network, or pass a local diffusers folder or .safetensors file with --model"
        ) from None


def download(repo_id: str) -> Path:
    """Fetch what the editor needs from the hub, or find it in the local cache when offline."""
    import huggingface_hub

    if not hub_reachable():
        return from_cache(repo_id, "this machine is offline: the hub cannot be reached")
    try:
        files = huggingface_hub.list_repo_files(repo_id)
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=hub_patterns(files)))
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise UserError(
            f"no model {repo_id!r} on the Hugging Face hub (or it is private and you are not logged in)"
        ) from None
    except Exception as network_error:  # proxy, DNS, time-out: try the cache
        text = str(network_error).strip()
        return from_cache(repo_id, text.splitlines()[0][:160] if text else type(network_error).__name__)
