"""Session fixtures: tiny tokenizers and random models built locally (no downloads, seconds).

- ``tiny["student"]`` / ``tiny["teacher"]``: Qwen2 architecture, one shared ByteLevel BPE tokenizer
  (a miniature of the same-tokenizer GKD pair).
- ``tiny["cross_student"]``: Llama architecture with a *different* ByteLevel BPE tokenizer.
- ``tiny["sp_student"]``: Llama architecture with a SentencePiece-style (Metaspace) tokenizer,
  the kind TRL's GOLD refuses.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, str]:
    """Paths of tiny local model directories (save_pretrained layout)."""
    from atlas_lib.core import tiny as tiny_lib

    root = tmp_path_factory.mktemp("tiny_models")
    names = {"student": "tiny-qwen2-student", "teacher": "tiny-qwen2-teacher",
             "cross_student": "tiny-llama-cross", "sp_student": "tiny-llama-sp"}
    return {k: tiny_lib.build(v, root / k) for k, v in names.items()}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Runs and cache under this test's tmp_path, W&B off: a training run writes nowhere else."""
    monkeypatch.setenv("ATLAS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("ATLAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return tmp_path
