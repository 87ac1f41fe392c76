"""Multi-process path: 2 CPU processes (gloo, launched with torchrun) run GKD and GRPO on tiny models.

Accelerate's own `launch` starts one process per node for CPU jobs (mpirun for more), so on one
machine the processes come from `torchrun`; accelerate picks up its RANK/WORLD_SIZE as usual.

The console command parses the same params as the notebooks; under DDP both ranks must end with
the same logged losses and identical parameters (gradients are all-reduced every step).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["gkd", "grpo"])
def test_two_cpu_processes_agree(stage, tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun not found next to the interpreter"
    env = {**os.environ, "ATLAS_RUNS": str(tmp_path / "runs"), "ATLAS_CACHE": str(tmp_path / "cache"),
           "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    sets = ["tracking.wandb=disabled", f"{stage}.max_steps=2", f"{stage}.eval_steps=2", f"{stage}.save_steps=2",
            "evaluation.reverse_kl=false"]
    cli = [sys.executable, "-m", "atlas_lib.cli"]
    subprocess.run([*cli, "data", "--params", "params/smoke.yaml"], cwd=ROOT, env=env, check=True, capture_output=True)
    cmd = [torchrun, "--nproc_per_node", "2", "-m", "atlas_lib.cli",
           "train", stage, "--params", "params/smoke.yaml", *[x for s in sets for x in ("--set", s)]]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"runs/smoke/{stage}/ranks/rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]["losses"]) == 2
    assert ranks[0]["losses"] == pytest.approx(ranks[1]["losses"], rel=1e-6)
    assert ranks[0]["param_checksum"] == pytest.approx(ranks[1]["param_checksum"], rel=1e-9)
    summary = json.loads((tmp_path / f"runs/smoke/{stage}/summary.json").read_text())
    assert summary["status"] == "complete" and summary["training"]["global_step"] == 2
