"""The start-up banner rendered from an inventory and a plan, in-process (pure text)."""

from itertrain.core import banner
from itertrain.core.names import CHECKPOINT, COMPLETE, CORRUPT, ITERATION, UNVERIFIED, Artifact
from itertrain.core.plan import Request, make_plan
from itertrain.core.selectors import Selector

NONE, AUTO = Selector("none"), Selector("auto")


def ckpt(step, state=COMPLETE, why=""):
    it = (step - 1) // 6
    return Artifact(f"checkpoint-{step}", CHECKPOINT, state, it, step, step - it * 6, 6, why=why)


def model(k, state=COMPLETE, why=""):
    return Artifact(f"iter_{k}", ITERATION, state, k, (k + 1) * 6, why=why)


def render(inv, rf=AUTO, ri=AUTO, n=3):
    plan = make_plan(inv, Request(rf, ri, n), stamp="T")
    return plan, banner.render("/exp", inv, plan, "/models/base").splitlines()


def test_scratch_says_so_and_names_the_model():
    _, lines = render([])
    assert "∅ No complete trainer checkpoint found" in lines
    assert "∅ No complete iteration model found" in lines
    assert "🆕 NO checkpoint selected - starting from scratch" in lines
    assert "   🎯 Model weights from: /models/base (--model_name)" in lines
    assert "   ▶️  Next: iteration 0, global step 0" in lines


def test_resume_shows_the_chosen_ones_counts_the_rest_and_names_each_skip():
    inv = [ckpt(3), ckpt(6), model(0), ckpt(9), ckpt(10, CORRUPT, "model.safetensors: 3 bytes, manifest says 9")]
    plan, lines = render(inv)
    assert plan.state_from == "checkpoint-9"
    assert "📁 Found trainer checkpoint: /exp/checkpoint-9" in lines
    assert "   (+2 other complete checkpoints: `itertrain status` lists them)" in lines
    assert "⏭️  Skipped /exp/checkpoint-10: corrupt: model.safetensors: 3 bytes, manifest says 9" in lines
    assert "   ✏️  Rename aside: checkpoint-10 -> checkpoint-10.corrupt (corrupt: model.safetensors: 3 bytes, " \
           "manifest says 9)" in lines
    assert "   📁 Training state from: /exp/checkpoint-9" in lines
    assert lines.index("RECOVERY STRATEGY:") < lines.index("   ▶️  Next: iteration 1, global step 9")


def test_unverified_artifacts_are_flagged_and_superseded_ones_listed():
    inv = [model(0, UNVERIFIED, "no manifest"), ckpt(9)]
    plan, lines = render(inv, NONE, AUTO)
    assert "🎯 Found COMPLETE iteration 0 model: /exp/iter_0 (UNVERIFIED: no itertrain manifest)" in lines
    assert "   ⚠️  no manifest" in lines
    assert "   ✏️  Rename aside: checkpoint-9 -> checkpoint-9.superseded-T (later than the starting point " \
           "(iteration 1, step 6))" in lines
    assert any(line.startswith("   ⚠️  Warning: trained progress newer") for line in lines)


def test_done_says_nothing_to_train():
    _, lines = render([model(0), model(1)], n=2)
    assert "   ✅ Nothing to train: the experiment is complete" in lines
    assert not any("Next:" in line for line in lines)
