"""Every file of each artifact kind, deleted, truncated or with a flipped byte.

Run in-process through the same code a real start runs before it trains (restore.resolve: inventory,
plan, checksums, agreed fallback; restore.apply: renames; banner.render), so the whole matrix takes
seconds. Each case must be detected before training, fall back, be renamed aside (never deleted),
and be named with its reason in the banner; with --strict_resume it must stop instead. The phase
outputs (samples_K) and the built-in base are checked end to end below.
"""

import shutil

import pytest
from conftest import SMALL, copy_experiment, flip, max_diff, resume_until_done, truncate

from itertrain.app import config
from itertrain.core import banner
from itertrain.runtime import restore

pytestmark = pytest.mark.e2e

AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]


def delete(p):
    p.unlink()




DAMAGES = {"delete": delete, "truncate": truncate, "flip": flip}
CHECKPOINT_FILES = ["curve.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                    "training_args.bin", "config.json", "generation_config.json", "tokenizer.json",
                    "tokenizer_config.json", "itertrain.json"]
ITERATION_FILES = ["curve.json", "model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                   "tokenizer_config.json", "itertrain.json"]


def names(text: str, artifact: str, victim: str) -> bool:
    """One line of the banner names the artifact and the damaged file (the reason, not a neighbour)."""
    return any(artifact in line and victim in line for line in text.splitlines())


def start(out, *flags):
    """What a real start does before training: the verified plan, its renames, the banner."""
    cfg = config.parse(["--output_dir", str(out), *SMALL, *flags])
    inv, plan = restore.resolve(cfg, 6)
    restore.apply(cfg, plan, str(out / "base"))
    return plan, banner.render(str(out), inv, plan, "base")


def test_matrix_names_every_file_that_exists(crashed_in_iter1):
    """The lists above are the artifacts' real contents (so no file kind is left out)."""
    ck = {p.name for p in (crashed_in_iter1 / "checkpoint-9").iterdir()}
    it = {p.name for p in (crashed_in_iter1 / "iter_0").iterdir()}
    assert ck == set(CHECKPOINT_FILES), ck
    assert it == set(ITERATION_FILES), it


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("victim", CHECKPOINT_FILES)
def test_checkpoint_file_damaged(tmp_path, crashed_in_iter1, victim, damage):
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    DAMAGES[damage](out / "checkpoint-9" / victim)
    if victim == "itertrain.json" and damage == "delete":
        # No manifest over intact files: an unverified HF checkpoint, accepted and flagged.
        plan, text = start(out, *AUTO)
        assert plan.state_from == "checkpoint-9" and "UNVERIFIED" in text
        return
    with pytest.raises(restore.RecoveryError, match="checkpoint-9") as strict:
        start(copy_experiment(out, tmp_path / "strict"), *AUTO, "--strict_resume")
    assert victim in str(strict.value), strict.value
    plan, text = start(out, *AUTO)
    # Fell back to the newest usable point: iter_0 (checkpoint-6 belongs to iteration 0, already done).
    assert (plan.strategy, plan.weights_from, plan.next_iteration) == ("iteration", "iter_0", 1)
    assert len(list(out.glob("checkpoint-9.corrupt*"))) == 1 and not (out / "checkpoint-9").exists()
    assert names(text, "checkpoint-9", victim), text


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("victim", ITERATION_FILES)
def test_iteration_file_damaged(tmp_path, crashed_in_iter1, victim, damage):
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    shutil.rmtree(out / "checkpoint-9")  # so that iter_0 is what auto selects
    DAMAGES[damage](out / "iter_0" / victim)
    if victim == "itertrain.json" and damage == "delete":
        plan, text = start(out, *AUTO)
        assert plan.weights_from == "iter_0" and "UNVERIFIED" in text
        return
    with pytest.raises(restore.RecoveryError, match="iter_0"):
        start(copy_experiment(out, tmp_path / "strict"), *AUTO, "--strict_resume")
    plan, text = start(out, *AUTO)
    # Fell back to the other kind: checkpoint-6 is iteration 0's last step (evaluate and save only).
    assert (plan.strategy, plan.state_from, plan.training_finished) == ("trainer", "checkpoint-6", True)
    assert len(list(out.glob("iter_0.corrupt*"))) == 1
    assert names(text, "iter_0", victim), text


@pytest.mark.parametrize("victim", ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                                    "trainer_state.json"])
@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_plain_hf_checkpoint_damaged(tmp_path, crashed_in_iter1, victim, damage):
    """No manifest (a checkpoint plain HF wrote): its own format's rules and a trial load catch it."""
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    (out / "checkpoint-9" / "itertrain.json").unlink()
    DAMAGES[damage](out / "checkpoint-9" / victim)
    plan, text = start(out, *AUTO)
    if (victim, damage) == ("rng_state.pth", "delete"):  # optional in HF's format: accepted, flagged
        assert plan.state_from == "checkpoint-9" and "RNG not restored" in text, text
        return
    assert plan.weights_from == "iter_0", text
    assert len(list(out.glob("checkpoint-9.*"))) == 1 and not (out / "checkpoint-9").exists()
    # HF's format rules name what is missing by its role; a damaged file is named by a trial load
    named = "missing model weights" if (victim, damage) == ("model.safetensors", "delete") else victim
    assert names(text, "checkpoint-9", named), text


def test_damaged_scratch_is_refused_not_restarted(tmp_path, crashed_in_iter1):
    """Every artifact broken by size (found by the inventory, not at load): auto never means scratch."""
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    for d in ("checkpoint-3", "checkpoint-6", "checkpoint-9", "iter_0"):
        truncate(out / d / "model.safetensors")
    with pytest.raises(restore.RecoveryError, match="refusing to restart from scratch.*--resume_from none"):
        start(out, *AUTO)
    assert all((out / d).is_dir() for d in ("checkpoint-3", "checkpoint-6", "checkpoint-9", "iter_0"))
    _, plan = restore.resolve(config.parse(["--output_dir", str(out), *SMALL, *AUTO, "--dry_run"]), 6)
    assert plan.strategy == "scratch" and any("a real run stops here" in w for w in plan.warnings)


def test_phase_outputs_and_base_damaged_are_made_again_exactly(tmp_path, crashed_in_iter1, reference):
    """samples_0 (reused by iteration 1), samples_1 (iteration 1's own) and the built-in base, each
    damaged: set aside, made again from the same model and seed, and the run ends as the reference."""
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    flip(out / "samples_0" / "generated.jsonl")
    truncate(out / "samples_1" / "itertrain.json")
    flip(out / "base" / "tokenizer.json")
    proc = resume_until_done(out)
    for name in ("samples_0", "samples_1", "base"):
        assert len(list(out.glob(f"{name}.corrupt*"))) == 1, name
    assert "samples_0: generated.jsonl fails its checksum" in proc.stdout, proc.stdout[-3000:]
    assert "base: tokenizer.json fails its checksum" in proc.stdout
    assert max_diff(out / "iter_1", reference / "iter_1") == 0.0
    assert (out / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()


def test_generator_model_damaged_stops_with_reason(tmp_path, crashed_in_iter1):
    """Iteration 1 must generate again, and iter_0 (its generator) is damaged: a clear stop, renamed aside."""
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    shutil.rmtree(out / "samples_1")
    flip(out / "iter_0" / "model.safetensors")
    from conftest import run_cli

    proc = run_cli(out, *AUTO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "iter_0 cannot generate iteration 1's samples: model.safetensors fails its checksum" in proc.stderr
    assert len(list(out.glob("iter_0.corrupt*"))) == 1
