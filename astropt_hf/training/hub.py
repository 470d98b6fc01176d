"""Uploading the final model folder to the Hugging Face hub (`--push_to_hub --hub_model_id`)."""

from __future__ import annotations

import os
from pathlib import Path

from .arguments import ConfigError

# What a hub repository gets: the model, its processor and code, the card and the run's records.
UPLOAD_PATTERNS = ["*.json", "*.safetensors", "*.py", "README.md", "*.png", "metrics.jsonl", "eval/*.png"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_push_possible(hub_model_id: str | None) -> None:
    """Raise `ConfigError` *before training* if a push at the end could not work."""
    if not hub_model_id:
        raise ConfigError("push_to_hub needs hub_model_id (e.g. --hub_model_id your-name/astropt-5m)")
    if _offline():
        raise ConfigError(
            "push_to_hub is set but HF_HUB_OFFLINE is set: the upload at the end would fail. Unset "
            "HF_HUB_OFFLINE or drop --push_to_hub (upload later with `huggingface-cli upload`)."
        )
    from huggingface_hub import get_token

    if not get_token():
        raise ConfigError(
            "push_to_hub is set but no Hugging Face token was found: run `huggingface-cli login` or set HF_TOKEN"
        )


def push_folder(folder: str | os.PathLike, hub_model_id: str, private: bool = False) -> str:
    """Create (or reuse) the model repository and upload the final model folder; returns the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(hub_model_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=hub_model_id,
        folder_path=str(Path(folder)),
        allow_patterns=UPLOAD_PATTERNS,
        ignore_patterns=["checkpoint-*/**", "debug/**"],
        commit_message="astroPT pretraining run",
    )
    return str(url)


__all__ = ["check_push_possible", "push_folder"]
