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


def download(repo_id: str) -> Path:
    """Fetch what the editor needs from the hub, or find it in the local cache when offline."""
    import huggingface_hub

    try:
        files = huggingface_hub.list_repo_files(repo_id)
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=hub_patterns(files)))
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise UserError(
            f"no model {repo_id!r} on the Hugging Face hub (or it is private and you are not logged in)"
        ) from None
    except Exception as network_error:  # offline, proxy, DNS, time-out: try the cache
        try:
            return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True))
        except Exception:
            reason = (
                str(network_error).strip().splitlines()[0][:160]
                if str(network_error).strip()
                else type(network_error).__name__
            )
            raise UserError(
                f"cannot download {repo_id!r} from the Hugging Face hub and it is not in the local cache ({reason}); "
                "download it where there is network, or pass a local folder or .safetensors file"
            ) from None
