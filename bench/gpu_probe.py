"""The one-GPU profile's GKD and GRPO stages on a real GPU, at the real model shapes, with random weights.

    python bench/gpu_probe.py --tokenizer DIR --data FILE --out DIR [--stages gkd grpo] [--steps 2]

``params/paper-1gpu.yaml`` claims that the seed's GKD stage (Qwen2.5-7B student with LoRA r 64,
Qwen2.5-14B teacher in bf16, 2 x 4 sequences of 256 sampled tokens per step) fits one 80 GB GPU;
``atlas memory`` says so from a first-order count. This probe measures it where no hub is reachable:
it writes model directories holding the published ``config.json`` of each model (the shapes in
``atlas_lib.training.memory.KNOWN``) and a Qwen2.5 tokenizer (``--tokenizer``: any save_pretrained
Qwen2.5 tokenizer, e.g. the embedded student's cache directory), then runs the kit's own stages
(``atlas data``, ``atlas train gkd``, ``atlas train grpo``) with every setting of the profile except
the step counts and the evaluation sizes. The weights are random (initialised on the GPU, where
``from_pretrained`` would have read them), so:

- memory and time per step are those of the real shapes, at the longest samples: random weights
  rarely emit a stop token, so every sample runs to ``max_completion_length`` (an upper bound);
- losses, rewards and accuracies are noise, and are not reported.

Written to ``--out``: ``probe.json`` (the memory plan's estimate; per stage: wall time, torch's peak
allocated and reserved GiB, seconds per optimizer step and per eval point from the run's
``metrics.jsonl``) and each stage's ``summary.json``. ``--tiny`` swaps in a 2-layer model of the same family to test the probe on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STUDENT, TEACHER = "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-14B-Instruct"
NAME = "gpu-probe"  # the probe's profile name: its runs are <work>/runs/gpu-probe/<stage>
MARKER = "RANDOM_WEIGHTS"  # a model dir holding this file is built from its config.json, on the run's device
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "vocab.json", "merges.txt")
TINY = dict(hidden=64, layers=2, inter=128, heads=4, kv=2)


def write_model_dir(name: str, tokenizer: Path, dest: Path, tiny: bool) -> Path:
    from transformers import GenerationConfig, Qwen2Config

    from atlas_lib.training.memory import KNOWN

    a = {**KNOWN[name], **(TINY if tiny else {})}
    cfg = Qwen2Config(hidden_size=a["hidden"], num_hidden_layers=a["layers"], vocab_size=a["vocab"],
                      intermediate_size=a["inter"], num_attention_heads=a["heads"],
                      num_key_value_heads=a["kv"], tie_word_embeddings=a["tied"], max_position_embeddings=32768,
                      rope_theta=1e6, rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645)
    dest.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(dest)
    GenerationConfig(bos_token_id=151643, eos_token_id=[151645, 151643], pad_token_id=151643).save_pretrained(dest)
    for f in TOKENIZER_FILES:
        if (tokenizer / f).exists():
            shutil.copy(tokenizer / f, dest / f)
    (dest / MARKER).write_text("random weights: see bench/gpu_probe.py\n")
    return dest


def patch_random_weights() -> None:
    """``from_pretrained`` of a marked dir -> ``from_config`` on the device (no weights to read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    original = AutoModelForCausalLM.from_pretrained.__func__

    def from_pretrained(cls, path, *args, dtype=None, **kw):
        p = Path(str(path))
        if not (p / MARKER).exists():
            return original(cls, path, *args, dtype=dtype, **kw)
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(p), dtype=dtype)
        model.generation_config = GenerationConfig.from_pretrained(p)
        return model

    AutoModelForCausalLM.from_pretrained = classmethod(from_pretrained)


def probe_params(student: Path, teacher: Path, data: Path, steps: int, tiny: bool, profile: str = "paper-1gpu",
                 sets: list[str] = ()) -> dict:
    import yaml

    p = yaml.safe_load((ROOT / "params" / f"{profile}.yaml").read_text())
    p["name"] = NAME
    p["description"] = "paper-1gpu settings, random weights of the real shapes (bench/gpu_probe.py)"
    p["models"].update(student=str(student), teacher=str(teacher))
    p["cross_tokenizer"]["teacher"] = str(teacher)
    p["data"] = dict(source="local", path=str(data), eval_limit=32, val_limit=16, train_limit=128)
    p["evaluation"].update(limit=32, during_training_limit=16, batch_size=32)
    p["tracking"] = {"wandb": "disabled"}
    for m in ("gkd", "grpo"):
        p[m].update(max_steps=steps, eval_steps=steps, save_steps=steps)
    if tiny:
        p["run"] = {**p["run"], "device": "auto", "dtype": "auto"}
        p["evaluation"].update(max_new_tokens=16, limit=4, during_training_limit=2, batch_size=4)
        p["data"].update(eval_limit=4, val_limit=2, train_limit=16)
        p["gkd"].update(max_completion_length=16, gradient_accumulation_steps=2)
        p["grpo"].update(max_completion_length=16, gradient_accumulation_steps=4)
    from atlas_lib.cli import parse_sets

    for key, value in parse_sets(list(sets)).items():  # as `atlas --set` reads them
        section, field = key.split(".", 1)
        p[section][field] = value
    return p


def read_metrics(run: Path) -> dict:
    """Seconds per optimizer step and per eval point, from the run's ``metrics.jsonl``."""
    from atlas_lib.core.files import read_jsonl

    rows = read_jsonl(run / "metrics.jsonl")
    train = [r for r in rows if r.get("kind") == "train"]
    secs = [r["seconds"] for r in train]
    return {"step_seconds": [round(b - a, 1) for a, b in zip([0.0, *secs], secs, strict=False)],
            "step_peak_gpu_mem_gb": [r.get("peak_gpu_mem_gb") for r in train],
            "completion_tokens": [r.get("completion_tokens", r.get("num_tokens")) for r in train],
            "evals": [{k: r.get(k) for k in ("step", "n", "eval_seconds", "generation_seconds",
                                              "avg_generated_tokens")} for r in rows if r.get("kind") == "eval"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", type=Path, required=True, help="dir with a Qwen2.5 tokenizer.json")
    ap.add_argument("--data", type=Path, required=True, help="GSM8K-style .jsonl (question, answer '... #### n')")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu-probe"))
    ap.add_argument("--stages", nargs="+", default=["gkd", "grpo"], choices=["gkd", "grpo"])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--profile", default="paper-1gpu", help="params/<profile>.yaml to take the settings from")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override (repeatable)")
    ap.add_argument("--tiny", action="store_true", help="2-layer models: test the probe itself on a CPU")
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.work, ignore_errors=True)
    student = write_model_dir(STUDENT, args.tokenizer, args.work / "models" / "student", args.tiny)
    teacher = write_model_dir(TEACHER, args.tokenizer, args.work / "models" / "teacher", args.tiny)
    params_file = args.work / "gpu-probe.yaml"
    import yaml
    params_file.write_text(yaml.safe_dump(probe_params(student, teacher, args.data, args.steps, args.tiny,
                                                       args.profile, args.set),
                                          sort_keys=False))
    env = {**os.environ, "ATLAS_RUNS": str(args.work / "runs"), "PYTHONUNBUFFERED": "1"}
    result: dict = {"params": str(params_file), "stages": {}}

    from atlas_lib.core import config
    from atlas_lib.training import memory

    plan = memory.estimate(config.load(params_file), gpu_gb=80)
    result["gkd_plan"] = {"total_gib": round(plan.total_gib, 1), "fits_80": plan.fits,
                          "rows": [(c, round(g, 2), n) for c, g, n in plan.rows]}
    try:
        import torch
        if torch.cuda.is_available():
            result["device"] = torch.cuda.get_device_name(0)
            result["device_total_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except Exception as e:  # noqa: BLE001
        result["device"] = f"unknown ({e})"

    for stage in ["data", *args.stages]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-stage", stage, str(params_file)]
        t0 = time.monotonic()
        rc = subprocess.run(cmd, env=env, cwd=ROOT).returncode
        rec = {"rc": rc, "wall_s": round(time.monotonic() - t0, 1)}
        run = args.work / "runs" / NAME / stage
        if (run / "cuda_memory.json").exists():
            rec.update(json.loads((run / "cuda_memory.json").read_text()))
        if stage != "data" and (run / "summary.json").exists():
            shutil.copy(run / "summary.json", args.out / f"{stage}_summary.json")
            tr = json.loads((run / "summary.json").read_text()).get("training", {})
            rec.update({k: tr.get(k) for k in ("duration_seconds", "global_step", "peak_rss_gb")})
            rec.update(read_metrics(run))
        result["stages"][stage] = rec
        (args.out / "probe.json").write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps({stage: rec}, default=str), flush=True)
        if rc:
            return rc
    return 0


def run_stage(stage: str, params_file: str) -> int:
    patch_random_weights()
    from atlas_lib import cli

    argv = ["data", "--params", params_file] if stage == "data" else ["train", stage, "--params", params_file]
    rc = cli.main(argv)
    import torch
    if torch.cuda.is_available():  # the whole stage's peaks, evaluation included, in GiB like the plan
        out = Path(os.environ["ATLAS_RUNS"]) / NAME / stage
        out.mkdir(parents=True, exist_ok=True)
        (out / "cuda_memory.json").write_text(json.dumps({
            "max_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}))
    return rc


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--run-stage":
        sys.exit(run_stage(sys.argv[2], sys.argv[3]))
    sys.exit(main())
