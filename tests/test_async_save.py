"""async_save.py: host copies that stay tied and are reused, one write in flight, errors surfacing
in the training thread; and end to end, async checkpoints byte-identical to synchronous ones."""

import errno
import threading

import pytest
import torch
from conftest import run_cli

from itertrain.runtime.async_save import Buffers, Saver


def test_copies_are_exact_detached_and_reused():
    b = Buffers()
    src = {"w": torch.randn(4, 3), "state": {0: {"step": torch.tensor(3.0), "m": torch.randn(5)}}, "lr": 0.1}
    first = b.copy(src, "x")
    assert torch.equal(first["w"], src["w"]) and torch.equal(first["state"][0]["m"], src["state"][0]["m"])
    assert first["lr"] == 0.1 and first["w"].data_ptr() != src["w"].data_ptr()
    src["w"].add_(1.0)  # training goes on: the copy must not move
    assert not torch.equal(first["w"], src["w"])
    second = b.copy(src, "x")
    assert second["w"].data_ptr() == first["w"].data_ptr()  # the same host buffer, no new allocation
    assert torch.equal(second["w"], src["w"])


def test_tied_tensors_stay_tied_and_a_new_shape_gets_a_new_buffer():
    b = Buffers()
    emb = torch.randn(6, 2)
    out = b.copy({"embed": emb, "lm_head": emb, "other": emb[1:]}, "m")
    assert out["embed"] is out["lm_head"]  # save_pretrained drops the tied copy by storage
    assert out["other"] is not out["embed"] and torch.equal(out["other"], emb[1:])
    again = b.copy({"embed": torch.randn(7, 2)}, "m")
    assert again["embed"].shape == (7, 2)


def test_one_write_in_flight_and_the_next_waits():
    saver, release, order = Saver(), threading.Event(), []

    def slow():
        release.wait(5)
        order.append("first")

    saver.submit("checkpoint-1", slow)
    assert saver.busy()
    threading.Timer(0.2, release.set).start()
    saver.submit("checkpoint-2", lambda: order.append("second"))  # blocks until the first is done
    saver.wait()
    assert order == ["first", "second"] and not saver.busy()


def test_a_background_error_surfaces_with_its_reason():
    saver = Saver()

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "/x/optimizer.pt")

    saver.submit("checkpoint-7", full)
    with pytest.raises(OSError) as e:
        while True:
            saver.check()
    assert e.value.errno == errno.ENOSPC
    assert "checkpoint-7" in "".join(e.value.__notes__) and "not committed" in "".join(e.value.__notes__)
    saver.wait()  # reported once, then the saver is usable again


@pytest.mark.e2e
def test_async_checkpoints_equal_synchronous_ones_byte_for_byte(tmp_path, reference):
    a, s = reference, tmp_path / "sync"  # (the reference run saves asynchronously: the default)
    assert run_cli(s, "--async_save", "false").returncode == 0
    names = sorted(p.name for p in a.glob("checkpoint-*"))
    assert names == sorted(p.name for p in s.glob("checkpoint-*")) and names
    for name in names:
        for f in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "curve.json"):
            assert (a / name / f).read_bytes() == (s / name / f).read_bytes(), f"{name}/{f}"
