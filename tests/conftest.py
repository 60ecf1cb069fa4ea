"""Shared fixtures: a small synthetic otolith set and tiny OpenCLIP models the tests build themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY_MODEL_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
TINY_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash"}


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory) -> Path:
    """The synthetic demo at its smallest size (120 images, 12 per age)."""
    from otolith_core.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("demo"), n_images=120, seed=3)


def save_tiny_open_clip(folder: Path, *, preprocess: dict | None = None, seed: int = 0) -> Path:
    """A complete random-weight OpenCLIP model (both towers) in open_clip's local-dir layout."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = CLIP(**TINY_MODEL_CFG)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": TINY_MODEL_CFG, "preprocess_cfg": preprocess or TINY_PREPROCESS}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def place_in_hf_cache(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """Lay files out exactly as huggingface_hub's cache does (refs/main -> snapshots/<commit>/)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(Path(source).read_bytes())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_open_clip(tmp_path_factory.mktemp("tiny") / "tiny-clip")


@pytest.fixture
def offline_hub(monkeypatch):
    """No network for the Hugging Face hub, the way a user's offline laptop has none."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
