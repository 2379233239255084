"""Broken artifacts are detected before training, skipped or fallen back from, renamed aside (never
deleted), named in the banner; --strict_resume turns that into an error; all broken -> no scratch."""

import json

import pytest
from conftest import copy_experiment, dry_run, flip, max_diff, resume_until_done, run_cli, truncate

pytestmark = pytest.mark.e2e




DAMAGE = {
    "truncated weights": (lambda d: truncate(d / "model.safetensors"), "model.safetensors has"),
    "missing optimizer": (lambda d: (d / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    "garbage manifest": (lambda d: (d / "itertrain.json").write_text("{not json"), "itertrain.json unreadable"),
    "flipped optimizer byte": (lambda d: flip(d / "optimizer.pt"), "optimizer.pt fails its checksum"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_newest_checkpoint_damaged_falls_back(tmp_path, crashed_in_iter1, reference, damage):
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    hurt, reason = DAMAGE[damage]
    hurt(out / "checkpoint-9")
    proc = resume_until_done(out)
    assert reason in proc.stdout, proc.stdout[-3000:]
    aside = list(out.glob("checkpoint-9.corrupt*"))
    assert len(aside) == 1, list(out.iterdir())
    # Fell back to iter_0 + fresh iteration 1 (checkpoint-6 belongs to iteration 0): still exact.
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0


@pytest.mark.parametrize("damage", ["truncated weights", "flipped optimizer byte"])
def test_strict_resume_refuses(tmp_path, crashed_in_iter1, damage):
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    DAMAGE[damage][0](out / "checkpoint-9")
    proc = run_cli(out, "--resume_from", "auto", "--resume_from_iteration", "auto", "--strict_resume")
    assert proc.returncode == 1
    assert "--strict_resume" in proc.stderr and "checkpoint-9" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "iter_1").exists()


def test_everything_broken_never_restarts_from_scratch(tmp_path, crashed_in_iter1):
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    for d in ("checkpoint-3", "checkpoint-6", "checkpoint-9", "iter_0"):
        flip(out / d / "model.safetensors")
    proc = run_cli(out, "--resume_from", "auto", "--resume_from_iteration", "auto")
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "refusing to restart from scratch" in proc.stderr and "Traceback" not in proc.stderr
    for d in ("checkpoint-3", "checkpoint-6", "checkpoint-9", "iter_0"):
        assert len(list(out.glob(f"{d}.corrupt*"))) == 1  # every one kept, aside


def test_manifest_deleted_is_unverified_but_accepted(tmp_path, crashed_in_iter1, reference):
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    (out / "checkpoint-9" / "itertrain.json").unlink()
    plan, text = dry_run(out, "--resume_from", "auto", "--resume_from_iteration", "auto")
    assert plan["state_from"] == "checkpoint-9" and "UNVERIFIED" in text
    proc = resume_until_done(out)
    assert "fallback" not in proc.stdout and "checkpoint-9 was saved while training" in proc.stdout
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0


def test_weights_only_iteration_model_gets_config(tmp_path, reference):
    out = copy_experiment(reference, tmp_path / "exp")
    for d in ("checkpoint-3", "checkpoint-6", "checkpoint-9", "checkpoint-12", "iter_1"):
        (out / d).rename(out / f"{d}.old")
    (out / "iter_0" / "itertrain.json").unlink()
    (out / "iter_0" / "config.json").unlink()
    plan, text = dry_run(out, "--resume_from", "none", "--resume_from_iteration", "auto")
    assert {"create_config": "iter_0"} in plan["actions"] and "config.json missing" in text
    assert not (out / "iter_0" / "config.json").exists()  # not in --dry_run
    proc = run_cli(out, "--resume_from", "none", "--resume_from_iteration", "auto")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "iter_0" / "config.json").read_text())["model_type"] == "llama"
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0


class Payload:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {PWNED}",))


PWNED = "/tmp/itertrain-pwned-marker"


@pytest.mark.parametrize("victim,manifest", [("optimizer.pt", True), ("rng_state.pth", False)])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, crashed_in_iter1, reference, victim, manifest):
    import os
    import pickle

    from itertrain.core import manifest as mf

    if os.path.exists(PWNED):
        os.unlink(PWNED)
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    ck = out / "checkpoint-9"
    if manifest:
        import torch

        torch.save({"state": Payload()}, ck / victim)  # the format HF writes, with a payload
    else:
        (ck / victim).write_bytes(pickle.dumps({"state": Payload()}))  # a raw pickle
    if manifest:  # an attacker who also rewrites the manifest: the checksums match
        m = mf.build(str(ck), kind="checkpoint", name="checkpoint-9", iteration=1, global_step=9,
                     local_step=3, iteration_steps=6)
        (ck / "itertrain.json").write_text(json.dumps(m))
    else:
        (ck / "itertrain.json").unlink()
    proc = resume_until_done(out)
    assert f"{victim} refused: it is not plain tensor data" in proc.stdout, proc.stdout[-3000:]
    assert not os.path.exists(PWNED)
    assert len(list(out.glob("checkpoint-9.corrupt*"))) == 1
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0
