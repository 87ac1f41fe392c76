"""bench/gpu_probe.py on 2-layer models on the CPU (``--tiny``): the probe itself, before a GPU is spent on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_the_probe_runs_the_kits_stages_and_reads_their_metrics(tiny, tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b} #### {a + b}"})
                            + "\n" for a in range(8) for b in range(6)))
    out = tmp_path / "out"
    env = {**os.environ, "ATLAS_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    rc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_probe.py"), "--tiny", "--tokenizer", tiny["student"],
                         "--data", str(data), "--out", str(out), "--work", str(tmp_path / "work"), "--steps", "1"],
                        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert rc.returncode == 0, rc.stderr[-2000:]
    probe = json.loads((out / "probe.json").read_text())
    assert list(probe["stages"]) == ["data", "gkd", "grpo"]
    assert all(s["rc"] == 0 for s in probe["stages"].values())
    assert [len(probe["stages"][m]["step_seconds"]) for m in ("gkd", "grpo")] == [1, 1]
    assert probe["gkd_plan"]["total_gib"] > 0
    assert (out / "gkd_summary.json").exists()
