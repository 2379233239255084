"""The generate phase in committed shards (shards.py): a stop, a kill or a damaged shard costs at most
the shard being made, for any number of ranks, and the samples end byte-identical to an
uninterrupted run's. The runs generate 24 prompts in shards of 8 (conftest.SMALL)."""

import contextlib
import io
import json

import pytest
from conftest import TORCHRUN, killed_by, max_diff, run_cli, same_experiment

from itertrain.app import config, status
from itertrain.phases import samples, shards
from itertrain.tasks import Example

AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]


def test_spans_cover_every_prompt_once():
    assert shards.spans(24, 8) == [(0, 8), (8, 16), (16, 24)]
    assert shards.spans(2000, 512) == [(0, 512), (512, 1024), (1024, 1536), (1536, 2000)]
    assert shards.spans(3, 8) == [(0, 3)]


def test_the_default_shard_is_512_prompts_in_whole_batches():
    assert config.parse(["--output_dir", "x"]).it.generation_shard_size == 512  # batches of 256
    assert config.parse(["--output_dir", "x", "--generation_batch_size", "48"]).it.generation_shard_size == 528


@pytest.mark.parametrize("flags,needle", [
    (["--generation_shard_size", "0"], "--generation_shard_size must be >= 1, got 0"),
    (["--generation_shard_size", "100"], "--generation_shard_size 100 must be a multiple of --generation_batch_size 256"),
])
def test_bad_shard_sizes_are_one_line(flags, needle):
    with pytest.raises(config.UsageError, match=needle):
        config.parse(["--output_dir", "x", *flags])


def test_keep_deduplicates_and_caps_per_prompt_from_the_stored_verdicts():
    prompts = [Example("a", "1"), Example("b", "2"), Example("c", "3")]
    completions = [["1", "1", "x"], ["2", "y", "2 "], ["z", "z", "z"]]
    verdicts = [[True, True, False], [True, False, True], [False, False, False]]
    rows = shards.rows(0, [p.prompt for p in prompts], completions, verdicts)
    kept, stats = samples.keep(rows, max_per_prompt=1)
    assert kept == [Example("a", "1"), Example("b", "2")]
    assert stats == {"num_generated": 9, "num_kept": 2, "acceptance_rate": 2 / 9, "pass_at_k": 2 / 3}
    kept, _ = samples.keep(rows, max_per_prompt=5)
    assert kept == [Example("a", "1"), Example("b", "2"), Example("b", "2 ")]


def _status(out) -> dict:
    """`itertrain status OUT --json`, in this process (the console script is tests/test_cli.py's)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert status.main([str(out), "--json"]) == 0
    return json.loads(buf.getvalue())


def _same_samples(out, ref, ks=(0, 1)) -> None:
    for k in ks:
        for f in ("generated.jsonl", "selected.jsonl"):
            assert (out / f"samples_{k}" / f).read_bytes() == (ref / f"samples_{k}" / f).read_bytes(), (k, f)


def _same(out, ref) -> None:
    _same_samples(out, ref)
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


@pytest.mark.e2e
def test_a_stopped_phase_shows_its_progress_and_keeps_its_shards(tmp_path, reference, monkeypatch):
    out = tmp_path / "exp"
    assert run_cli(out, failpoints="signal.generate=3").returncode == 75  # 2 of 3 shards committed
    st = _status(out)
    assert st["generation"] == {"iteration": 0, "prompts_done": 16, "prompts_total": 24}
    assert st["iterations"][0]["state"] == "stopped (SIGTERM, generate): generating: 16/24 prompts"
    monkeypatch.setenv("COLUMNS", "200")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert status.main([str(out)]) == 0
    table = buf.getvalue()
    assert "generating: 16/24 prompts" in table
    proc = run_cli(out, *AUTO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(16 already committed in 2 shards)" in proc.stdout
    assert not (out / "samples_0.shards").exists() and not (out / "samples_1.shards").exists()  # pruned after the commit
    assert _status(out)["generation"] is None
    _same(out, reference)


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["truncated", "other model", "other settings", "other shard size"])
def test_a_shard_that_does_not_fit_is_set_aside_and_made_again(tmp_path, reference, damage):
    out = tmp_path / "exp"
    extra = ["--temperature", "0.7"] if damage == "other settings" else []
    extra += ["--generation_shard_size", "16"] if damage == "other shard size" else []
    # stopped in the batch after the first shard's: that shard is committed
    at = 3 if damage == "other shard size" else 2
    assert run_cli(out, *extra, failpoints=f"signal.generate={at}").returncode == 75
    shard = next((out / "samples_0.shards").iterdir())
    if damage == "truncated":
        data = (shard / "generated.jsonl").read_bytes()
        (shard / "generated.jsonl").write_bytes(data[: len(data) // 2])
    elif damage == "other model":
        m = json.loads((shard / "itertrain.json").read_text())
        m["extra"]["source_digest"] = "model.safetensors:0123456789abcdef"
        (shard / "itertrain.json").write_text(json.dumps(m))
    back = ["--temperature", "1.0"] if damage == "other settings" else []  # (else the record's 0.7 is carried)
    proc = run_cli(out, *AUTO, *back)
    assert proc.returncode == 0, proc.stderr[-3000:]
    why = {"truncated": "generated.jsonl has", "other shard size": "made with another --generation_shard_size"}.get(
        damage, "made by other weights or settings")
    assert f"⏭️  samples_0.shards/{shard.name}: {why}" in proc.stdout
    assert "already committed" not in proc.stdout
    kept = [p.name for p in (out / "samples_0.shards").iterdir()]  # set aside, never deleted
    assert len(kept) == 1 and kept[0].startswith(shard.name + (".corrupt" if damage == "truncated" else ".superseded-"))
    assert _status(out)["set_aside"] == [f"samples_0.shards/{kept[0]}"]
    _same(out, reference)


@pytest.mark.dist
def test_stopped_with_one_rank_resumed_with_two_keeps_the_shards_and_the_experiment(tmp_path, reference):
    """The shards committed by one process are kept by two, which train with the one-process run's
    global batch (core/elastic.py): it ends as that run, up to the float order of two processes."""
    out = tmp_path / "exp"
    assert run_cli(out, failpoints="signal.generate=2").returncode == 75
    proc = run_cli(out, *AUTO, launcher=TORCHRUN, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(8 already committed in 1 shard)" in proc.stdout
    same_experiment(out, reference)


@pytest.mark.dist
def test_killed_on_one_rank_during_generation_resumed_with_one_rank(tmp_path, reference, reference_two_ranks):
    _same_samples(reference_two_ranks, reference, ks=(0,))  # the base's samples do not depend on the ranks
    out = tmp_path / "exp"
    # each rank makes a shard per round: rank 0 dies (as kill -9) in its second, once the first round's
    # two shards are committed; torchrun then ends rank 1
    killed_by(run_cli(out, launcher=TORCHRUN, failpoints="generate=32@0", timeout=600), "generate=32")
    assert _status(out)["generation"]["prompts_done"] == 16
    proc = run_cli(out, *AUTO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(16 already committed in 2 shards)" in proc.stdout
    same_experiment(out, reference_two_ranks)  # the two-process run's global batch, kept
