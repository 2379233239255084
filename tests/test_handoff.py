"""An uninterrupted run reads no model weights back after its first iteration: iteration K+1
generates from and trains the model that iteration K trained and committed (handoff.py). The
values are those a resume loads from disk (the crash tests compare the two bit for bit)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, SMALL


@pytest.mark.e2e
def test_no_weights_read_back_after_the_first_iteration(tmp_path):
    probe = tmp_path / "probe.json"
    out = tmp_path / "exp"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "e2e_probe.py"), "--output_dir", str(out), *SMALL,
                           "--num_iterations", "3"], cwd=tmp_path, env={**os.environ, "E2E_PROBE_OUT": str(probe)},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(probe.read_text())
    committed = [r for r in record["reads"] if ".staging" not in r["path"]]  # (staged: hashed as committed)
    assert {r["iteration"] for r in committed} == {0}, committed  # only the base, in iteration 0
    assert [i["iteration"] for i in record["iterations"]] == [0, 1, 2]
    assert all({"generate", "train", "evaluate"} <= i["phases"].keys() for i in record["iterations"])
