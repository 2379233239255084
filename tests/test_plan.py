"""The pure planner, exhaustively: every crash point of a 3-iteration timeline x every way one
artifact can be broken x every flag form, checked against an independent oracle."""

import dataclasses
import itertools
import json

import pytest

from itertrain.core.names import CHECKPOINT, COMPLETE, CORRUPT, INCOMPLETE, ITERATION, UNVERIFIED, Artifact
from itertrain.core.plan import (
    BOTH,
    ITERATION_STRATEGY,
    SCRATCH,
    SHADOWED,
    TRAINER,
    PlanError,
    Request,
    Skip,
    make_plan,
)
from itertrain.core.selectors import Selector

STEPS, SAVE, ITERS = 4, 2, 3
NONE, AUTO = Selector("none"), Selector("auto")


def ckpt(step, state=COMPLETE):
    it = (step - 1) // STEPS
    return Artifact(f"checkpoint-{step}", CHECKPOINT, state, it, step, step - it * STEPS, STEPS, why="x")


def itm(k, state=COMPLETE, name=None):
    return Artifact(name or f"iter_{k}", ITERATION, state, k, (k + 1) * STEPS, why="x")


def timeline():
    """Artifacts in the order an uninterrupted run commits them."""
    out = []
    for k in range(ITERS):
        out += [ckpt(s) for s in range(k * STEPS + SAVE, (k + 1) * STEPS + 1, SAVE)]
        out.append(itm(k))
    return out


def progress(a):
    return a.global_step + (0.5 if a.kind == ITERATION else 0)


def req(rf=AUTO, ri=AUTO, carry=False, n=ITERS):
    return Request(rf, ri, n, carry)


def cases():
    events = timeline()
    for cut in range(len(events) + 1):
        prefix = events[:cut]
        yield prefix, None
        for i, a in enumerate(prefix):
            for bad in (CORRUPT, INCOMPLETE):
                broken = Artifact(a.name, a.kind, bad, a.iteration, a.global_step, a.local_step,
                                  a.iteration_steps, why="damaged")
                yield prefix[:i] + [broken] + prefix[i + 1:], a.name


@pytest.mark.parametrize("carry", [False, True])
def test_auto_auto_resumes_from_most_progress(carry):
    n = 0
    for inv, broken in cases():
        n += 1
        plan = make_plan(inv, req(carry=carry))
        usable = [a for a in inv if a.usable]
        assert broken is None or broken not in (plan.weights_from, plan.state_from)
        assert {s.artifact for s in plan.skipped} == {a.name for a in inv if not a.usable}
        if not usable:
            assert (plan.strategy, plan.next_iteration, plan.next_step) == (SCRATCH, 0, 0)
            continue
        best = max(usable, key=progress)
        if best.kind == CHECKPOINT:
            assert plan.strategy == TRAINER and plan.state_from == best.name == plan.weights_from
            assert (plan.next_iteration, plan.next_step) == (best.iteration, best.global_step)
            assert plan.training_finished == (best.local_step == STEPS)
        else:
            assert plan.weights_from == best.name
            assert (plan.next_iteration, plan.next_step) == (best.iteration + 1, best.global_step)
            last = f"checkpoint-{best.global_step}"
            if carry and any(a.name == last for a in usable):
                assert plan.strategy == BOTH and plan.state_from == last
            else:
                assert plan.strategy == ITERATION_STRATEGY and plan.state_from is None
                assert bool(plan.warnings) == (carry and any(a.kind == CHECKPOINT for a in usable))
        assert plan.done == (plan.next_iteration >= ITERS)
        renamed = {r.artifact for r in plan.renames}
        if plan.done:
            assert not renamed
        else:  # broken ones go aside; nothing usable is superseded when resuming from the newest
            assert renamed == {a.name for a in inv if not a.usable}
    assert n >= 100


def test_every_flag_form_over_every_crash_point():
    sels_c = [NONE, AUTO] + [Selector("explicit", s) for s in (2, 6, 99)]
    sels_i = [NONE, AUTO] + [Selector("explicit", k) for k in (0, 1, 7)]
    for inv, _broken in cases():
        names = {a.name for a in inv if a.usable}
        for rf, ri in itertools.product(sels_c, sels_i):
            try:
                plan = make_plan(inv, req(rf, ri))
            except PlanError as e:
                missing = (rf.explicit and f"checkpoint-{rf.number}" not in names) or (
                    ri.explicit and f"iter_{ri.number}" not in names)
                assert missing, e
                assert "usable here" in str(e)
                continue
            expected = {(False, False): SCRATCH, (True, False): TRAINER, (False, True): ITERATION_STRATEGY}
            has_c = plan.state_from is not None
            if rf.explicit:
                assert plan.state_from == f"checkpoint-{rf.number}"
            if ri.explicit:
                assert plan.weights_from == f"iter_{ri.number}"
            if rf.explicit and ri.explicit:
                assert plan.strategy == BOTH and plan.next_iteration == ri.number + 1
            if rf == NONE and ri == NONE:
                assert plan.strategy == SCRATCH
            if plan.strategy in (SCRATCH, ITERATION_STRATEGY):
                assert not has_c
            if (has_c, plan.strategy) == (True, ITERATION_STRATEGY):
                raise AssertionError(plan)
            if (rf == NONE) != (ri == NONE) and plan.strategy != SCRATCH:
                assert plan.strategy == expected[(rf != NONE, ri != NONE)]
            # Nothing later than the starting point stays where auto would pick it up.
            if not plan.done:
                kept = [a for a in inv if a.usable and a.name not in {r.artifact for r in plan.renames}]
                for a in kept:
                    if a.name in (plan.weights_from, plan.state_from):
                        continue
                    if a.kind == ITERATION:
                        assert a.iteration < plan.next_iteration
                    else:
                        assert a.global_step <= plan.next_step
                renamed = [r.to for r in plan.renames]
                assert len(set(renamed)) == len(renamed)


def test_json_has_the_documented_keys_and_round_trips():
    plan = make_plan(timeline()[:4] + [ckpt(99, CORRUPT)], req())
    d = json.loads(json.dumps(plan.to_json()))
    assert set(d) == {"strategy", "weights_from", "state_from", "next_iteration", "next_step", "reason",
                      "warnings", "skipped", "done", "iteration_models", "actions"}
    assert (d["strategy"], d["weights_from"], d["state_from"]) == (plan.strategy, plan.weights_from, plan.state_from)
    assert d["skipped"] == [{"artifact": "checkpoint-99", "state": CORRUPT, "reason": "x", "why": "corrupt: x"}]


def test_explicit_missing_lists_what_exists():
    with pytest.raises(PlanError, match=r"checkpoint-7 does not exist; usable here: checkpoint-2, checkpoint-4"):
        make_plan([ckpt(2), ckpt(4)], req(Selector("explicit", 7), NONE))
    with pytest.raises(PlanError, match=r"checkpoint-4 is corrupt"):
        make_plan([ckpt(2), ckpt(4, CORRUPT)], req(Selector("explicit", 4), NONE))


def test_explicit_older_checkpoint_supersedes_later_and_warns():
    inv = timeline()[:6]  # checkpoint-2,4, iter_0, checkpoint-6,8, iter_1
    plan = make_plan(inv, req(Selector("explicit", 2), NONE), stamp="T")
    assert plan.strategy == TRAINER and plan.state_from == "checkpoint-2"
    assert {(r.artifact, r.to) for r in plan.renames} == {
        ("checkpoint-4", "checkpoint-4.superseded-T"), ("iter_0", "iter_0.superseded-T"),
        ("checkpoint-6", "checkpoint-6.superseded-T"), ("checkpoint-8", "checkpoint-8.superseded-T"),
        ("iter_1", "iter_1.superseded-T")}
    assert any("will not be used" in w for w in plan.warnings)


def test_scratch_over_existing_experiment_sets_everything_aside():
    plan = make_plan(timeline()[:3], req(NONE, NONE), stamp="T")
    assert plan.strategy == SCRATCH
    assert {r.artifact for r in plan.renames} == {"checkpoint-2", "checkpoint-4", "iter_0"}


def test_explicit_both_mismatch_warns():
    inv = timeline()[:6]
    plan = make_plan(inv, req(Selector("explicit", 6), Selector("explicit", 0)))
    assert plan.strategy == BOTH and plan.next_iteration == 1 and plan.next_step == 6
    assert any("not the last step" in w for w in plan.warnings)
    assert any("fresh optimizer" in w for w in plan.warnings)


def test_rename_targets_avoid_existing_names():
    plan = make_plan([ckpt(2, CORRUPT)], req(), existing=frozenset({"checkpoint-2", "checkpoint-2.corrupt"}))
    assert plan.renames[0].to == "checkpoint-2.corrupt.1"


def test_seed_base_model_is_iteration_zero_and_iter_0_shadows_it():
    base = itm(0, UNVERIFIED, name="base_model")
    plan = make_plan([base, ckpt(4)], req())  # iteration 0's own last step: base_model finished it
    assert plan.strategy == ITERATION_STRATEGY and plan.weights_from == "base_model"
    plan = make_plan([base], req(NONE, Selector("explicit", 0)))
    assert plan.weights_from == "base_model" and plan.next_iteration == 1
    plan = make_plan([base, itm(0)], req(NONE, AUTO))
    assert plan.weights_from == "iter_0"
    assert plan.skipped == [Skip("base_model", SHADOWED, "iter_0 is the same iteration, and verified")]
    assert not plan.renames


def test_needs_config_becomes_an_action():
    a = Artifact("iter_1", ITERATION, UNVERIFIED, 1, 8, needs_config=True)
    plan = make_plan([a], req(NONE, AUTO))
    assert plan.create_config == ["iter_1"]
    assert {"create_config": "iter_1"} in plan.to_json()["actions"]


def test_adopted_models_serve_as_the_model_of_their_iteration_and_get_a_config():
    base = dataclasses.replace(itm(0, UNVERIFIED, name="base_model"), needs_config=True)
    iter1 = dataclasses.replace(itm(1, UNVERIFIED), needs_config=True)
    # training iteration 1 from a checkpoint: base_model generates its samples, so it is loaded too
    plan = make_plan([base, ckpt(6)], req())
    assert (plan.strategy, plan.next_iteration, plan.models) == (TRAINER, 1, {0: "base_model"})
    assert plan.create_config == ["base_model"]
    plan = make_plan([base, itm(0), iter1, ckpt(4)], req())  # our iter_0 shadows base_model
    assert plan.models == {0: "iter_0", 1: "iter_1"} and plan.create_config == ["iter_1"]
    assert plan.to_json()["iteration_models"] == {"0": "iter_0", "1": "iter_1"}
    # a model the plan sets aside (later than the starting point) is not one it will load
    plan = make_plan([base, iter1], req(NONE, Selector("explicit", 0)))
    assert plan.models == {0: "base_model"} and plan.create_config == ["base_model"]


def test_foreign_checkpoint_counting_another_runs_steps_is_refused_with_the_fix():
    plain = dataclasses.replace(ckpt(6), state=UNVERIFIED, run_step=6, run_steps=8)  # HF's own count
    with pytest.raises(PlanError, match=r"checkpoint-6 is a plain HF checkpoint at step 6 of a 8-step run .* "
                                        r"places it at step 2 of iteration 1: pass the --max_steps of the run "
                                        r"that wrote it \(8\)"):
        make_plan([plain], req())
    assert make_plan([plain], req(NONE, AUTO)).strategy == SCRATCH  # not resumed: nothing refused
    seed = dataclasses.replace(plain, run_step=2)  # named by the global step, counting its iteration's
    assert make_plan([seed], req()).state_from == "checkpoint-6"


def test_done_writes_nothing():
    plan = make_plan(timeline(), req(NONE, AUTO))
    assert plan.done and not plan.renames


def sharded(engine, world):
    return dataclasses.replace(ckpt(6), engine=engine, world_size=world)


def test_deepspeed_shards_on_another_world_size_are_converted_and_kept():
    arts = [ckpt(2), itm(0), sharded("deepspeed", 4)]
    plan = make_plan(arts, Request(AUTO, AUTO, ITERS, world_size=2))
    assert (plan.state_from, plan.convert) == ("checkpoint-6", "checkpoint-6")
    assert plan.to_json()["actions"][-1] == {"convert": "checkpoint-6", "to": "checkpoint-6.universal"}
    assert any("checkpoint-6 holds DeepSpeed ZeRO shards written by 4 processes and this run has 2: they are "
               "converted with DeepSpeed's universal checkpoint into checkpoint-6.universal" in w for w in plan.warnings)
    assert any("checkpoint-6 was written by 4 processes and this run has 2: the RNG state of ranks 2-3 is not used"
               in w for w in plan.warnings)
    same = make_plan(arts, Request(AUTO, AUTO, ITERS, world_size=4))
    assert (same.state_from, same.convert) == ("checkpoint-6", None)
    # without the training state nothing sharded is loaded: the iteration model is fine
    assert make_plan(arts, Request(NONE, AUTO, ITERS, world_size=2)).weights_from == "iter_0"


def test_fsdp_shards_reshard_and_plain_checkpoints_load_anywhere():
    for a in (sharded("fsdp", 4), sharded(None, 4)):
        assert make_plan([a], Request(AUTO, NONE, ITERS, world_size=1)).state_from == "checkpoint-6"


def test_sharded_state_pairs_only_with_the_iteration_model_of_its_step():
    arts = [itm(0), dataclasses.replace(ckpt(4), engine="deepspeed", world_size=1), sharded("deepspeed", 1)]
    ok = make_plan(arts, Request(Selector("explicit", 4), Selector("explicit", 0), ITERS, carry_optimizer_state=True))
    assert (ok.strategy, ok.weights_from, ok.state_from) == (BOTH, "iter_0", "checkpoint-4")
    with pytest.raises(PlanError, match="checkpoint-6 holds deepspeed state.*choose one of the two"):
        make_plan(arts, Request(Selector("explicit", 6), Selector("explicit", 0), ITERS, carry_optimizer_state=True))
