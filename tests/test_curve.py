"""curve.json: written, read back, refused when malformed, and placed on the global-step axis."""

import json

from itertrain.core import commit, curve


def test_round_trip_and_malformed_files(tmp_path):
    curve.write(str(tmp_path), [1.0, 0.5], [1e-3, 2e-3])
    assert curve.read(str(tmp_path)) == {"loss": [1.0, 0.5], "lr": [1e-3, 2e-3]}
    for bad in ([1, 2], {"loss": [1.0]}, {"loss": [1.0, 2.0], "lr": [0.1]}, {"loss": "x", "lr": []}):
        (tmp_path / curve.NAME).write_text(json.dumps(bad))
        assert curve.read(str(tmp_path)) is None, bad
    (tmp_path / curve.NAME).write_text("{not json")
    assert curve.read(str(tmp_path)) is None
    assert curve.read(str(tmp_path / "absent")) is None


def test_committed_places_each_iteration_on_the_global_step_axis(tmp_path):
    out = str(tmp_path)
    for k, (end, loss) in enumerate([(6, [3.0, 2.0, 1.0]), (12, [0.9, 0.8])]):
        staged = commit.fresh_staging(out, f"iter_{k}")
        curve.write(staged, loss, [0.1] * len(loss))
        open(f"{staged}/model.safetensors", "wb").write(b"weights")
        commit.commit_dir(staged, f"{out}/iter_{k}", failpoint=("iteration.write", k), kind="iteration",
                          name=f"iter_{k}", iteration=k, global_step=end,
                          extra={"metrics": {"iteration": k, "eval_accuracy": 0.5}})
    got = curve.committed(out, 6)
    assert [(c["iteration"], c["offset"], c["end"], c["curve"]["loss"]) for c in got] == [
        (0, 3, 6, [3.0, 2.0, 1.0]), (1, 10, 12, [0.9, 0.8])]
    assert got[1]["metrics"] == {"iteration": 1, "eval_accuracy": 0.5}
