"""PEFT adapters (itertrain/adapters.py): flags, the adapter a run trains on, the fp32 merge, what is
recorded and refused; then real --use_peft runs, crashed and resumed bit-identically."""

import json
import shutil
import types
from pathlib import Path

import pytest
import torch
from conftest import (
    PEFT,
    TORCHRUN,
    assert_damaged_checkpoint_falls_back,
    copy_experiment,
    flip,
    killed_by,
    max_diff,
    reference_run,
    resume_until_done,
    run_cli,
    shared,
    start_in_process,
    truncate,
)

from itertrain.app import config, settings
from itertrain.core import commit, manifest
from itertrain.core.errors import AdapterError, AdapterMismatch
from itertrain.tasks import tinymodel
from itertrain.training import adapters

AUTO = ["--resume_from", "auto", "--resume_from_iteration", "auto"]


def parse(*flags):
    return config.parse(["--output_dir", "/tmp/unused", *flags])


# ---- flags ------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--load_in_4bit", "true"], "--load_in_4bit / --load_in_8bit quantize the frozen model of a PEFT run: add --use_peft"),
    (["--use_peft", "true", "--load_in_4bit", "true"],
     "--load_in_4bit (QLoRA) needs a CUDA GPU: bitsandbytes quantizes on the GPU, and this run has none"),
    (["--use_peft", "true", "--load_in_8bit", "true", "--load_in_4bit", "true"], "--load_in_4bit and --load_in_8bit: choose one"),
    (["--use_peft", "true", "--lora_r", "0"], "--lora_r must be >= 1, --lora_alpha > 0 and --lora_dropout in [0, 1)"),
    (["--use_peft", "true", "--lora_dropout", "1"], "--lora_r must be >= 1, --lora_alpha > 0 and --lora_dropout in [0, 1)"),
    (["--use_peft", "true", "--peft_iteration", "merge", "--carry_optimizer_state", "true"],
     "--peft_iteration merge trains a fresh adapter every iteration, so there is no optimizer state to carry: drop "
     "--carry_optimizer_state, or use --peft_iteration continue"),
    (["--use_peft", "true", "--deepspeed", str(Path(__file__).parent / "data" / "zero3.json")],
     "--use_peft runs with DDP or DeepSpeed ZeRO-1/2 (an adapter's state is small); ZeRO-3 and FSDP are not "
     "supported with it"),
])
def test_flags_that_cannot_run_are_refused_in_one_line(flags, message):
    with pytest.raises(AdapterError) as e:
        parse(*flags)
    assert str(e.value) == message


def test_lora_flags_take_trls_names_and_all_linear_is_peft_keyword():
    cfg = parse(*PEFT, "--lora_alpha", "8", "--lora_modules_to_save", "lm_head")
    made = adapters.config(cfg.peft)
    assert (made.r, made.lora_alpha, made.target_modules, made.modules_to_save) == (4, 8, "all-linear", ["lm_head"])
    assert adapters.config(parse("--use_peft", "true").peft).target_modules is None  # peft's per-architecture default


def test_peft_config_file_gives_the_adapter_and_implies_use_peft(tmp_path):
    path = tmp_path / "ia3.json"
    path.write_text(json.dumps({"peft_type": "IA3", "target_modules": ["k_proj", "v_proj", "down_proj"],
                                "feedforward_modules": ["down_proj"]}))
    cfg = parse("--peft_config", str(path))
    assert cfg.peft.use_peft and type(adapters.config(cfg.peft)).__name__ == "IA3Config"
    assert adapters.requested(cfg.peft)["peft_type"] == "IA3"


@pytest.mark.parametrize("content, flags, message", [
    ('{"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4}', [],
     "PREFIX_TUNING adds virtual tokens and cannot be merged into the weights; iteration models must be ordinary "
     "models (use LoRA or another method that merges)"),
    ('{"peft_type": "NOPE"}', [], "peft_type 'NOPE' is not a peft method"),
    ("{not json", [], "not a readable JSON file"),
    ('{"peft_type": "LORA"}', ["--lora_r", "8"], "gives the adapter: drop --lora_r"),
])
def test_bad_peft_config_files_are_refused(tmp_path, content, flags, message):
    path = tmp_path / "adapter_config.json"
    path.write_text(content)
    with pytest.raises(AdapterError) as e:
        parse("--peft_config", str(path), *flags)
    assert message in str(e.value) and str(e.value).count("\n") == 0


def test_recorded_settings_leave_out_where_peft_loaded_from_and_its_version():
    recorded = adapters.requested(parse(*PEFT).peft)
    assert recorded["r"] == 4 and recorded["target_modules"] == "all-linear"
    assert not set(adapters.UNRECORDED) & set(recorded)
    json.dumps(recorded)  # plain JSON, for the manifests


def test_settings_of_the_adapter_are_results_a_resume_compares():
    now = config.resolved(parse(*PEFT))
    assert now["use_peft"] is True and now["lora_r"] == 4
    assert settings.differences(now, config.resolved(parse(*PEFT[:-2]))) == [
        "lora_target_modules: ['all-linear'] -> None"]


# ---- what is trained, and the merge -------------------------------------------------------------

def test_the_frozen_model_and_where_the_adapter_comes_from(tmp_path):
    args = parse(*PEFT).peft
    base, it0, ckpt = tmp_path / "base", tmp_path / "iter_0", tmp_path / "checkpoint-9"
    for d in (base, it0 / "adapter", ckpt):
        d.mkdir(parents=True)
    (it0 / "adapter" / "adapter_config.json").write_text("{}")
    (ckpt / "adapter_config.json").write_text("{}")
    assert adapters.frozen_model(args, str(base), str(it0), "previous") == str(base)  # continue: always the base
    args.peft_iteration = "merge"
    assert adapters.frozen_model(args, str(base), str(it0), "previous") == str(it0)
    assert adapters.frozen_model(args, str(base), str(it0), "base") == str(base)
    assert adapters.adapter_in(str(base), str(base)) is None
    assert adapters.adapter_in(str(it0), str(base)) == str(it0 / "adapter")
    assert adapters.adapter_in(str(it0), str(it0)) is None  # merge: a fresh adapter on iter_0
    assert adapters.adapter_in(str(ckpt), str(base)) == str(ckpt)
    with pytest.raises(AdapterMismatch, match="holds no adapter to train on"):
        adapters.adapter_in(str(tmp_path), str(base))


def _peft_model(dtype=torch.float32, seed=0):
    from peft import LoraConfig, get_peft_model

    tok = tinymodel.make_tokenizer()
    model = tinymodel.make_model(seed, len(tok)).to(dtype)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)  # a trained adapter (peft starts B at zero)
    return peft_model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_is_done_in_fp32_and_cast_back_to_each_weights_dtype(dtype):
    model = _peft_model(dtype)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
    w = layer.get_base_layer().weight
    want = (w.float() + (b @ a) * layer.scaling["default"]).to(w.dtype)
    merged = adapters.merged(model)
    got = merged.model.layers[0].self_attn.q_proj.weight
    assert got.dtype == dtype and torch.equal(got, want)
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert set(merged.state_dict()) == set(tinymodel.make_model(0, len(tinymodel.make_tokenizer())).state_dict())


def test_merged_model_computes_what_the_adapter_did():
    model = _peft_model()
    ids = torch.tensor([[1, 5, 6, 14, 7, 15]])
    model.eval()
    with torch.no_grad():
        want = model(ids).logits
        got = adapters.merged(model)(ids).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_an_adapter_checkpoint_holds_the_trainable_weights_only():
    model = _peft_model()
    state = adapters.trainable_state(model)
    assert state and all("lora_" in k for k in state)
    assert len(state) == 2 * 2 * 2  # (A, B) x (q_proj, down_proj) x 2 layers


# ---- what a resume must match --------------------------------------------------------------------

def _artifact(root: Path, name: str, kind: str, peft: dict | None, files=("x.bin",)) -> None:
    staged = root / ".staging" / name
    staged.mkdir(parents=True)
    for f in files:
        (staged / f).write_text("x")
    commit.commit_dir(str(staged), str(root / name), failpoint=("none", 0), kind=kind, name=name, iteration=0,
                      global_step=3, extra={"peft": peft} if peft else {})


def _record(**kw):
    return {"base": "/models/a", "base_digest": "aaaa", "mode": "continue", "config": {"r": 4, "lora_alpha": 32}, **kw}


@pytest.mark.parametrize("was, now, train_from, message", [
    (_record(), None, "previous", "checkpoint-3 holds a PEFT adapter's training state, not the whole model's"),
    (None, _record(), "previous", "checkpoint-3 holds a full model's training state: resume it without --use_peft"),
    (_record(), _record(base="/models/b", base_digest="bbbb"), "previous",
     "checkpoint-3 was trained on the base model /models/a (weights aaaa), this run's is /models/b (weights bbbb): "
     "resume with the base it was trained on"),
    (_record(), _record(config={"r": 8, "lora_alpha": 32}), "previous",
     "checkpoint-3's adapter was made with other settings (r: 4, this run 8)"),
    (_record(), _record(mode="merge"), "previous",
     "checkpoint-3's adapter was made with other settings (peft_iteration: 'continue', this run 'merge')"),
    (_record(), _record(config={"r": 4, "lora_alpha": 32, "newer_peft_setting": 1}), "previous", None),
    (_record(), _record(base="/moved/a"), "previous", None),  # the same weights elsewhere
])
def test_a_checkpoint_resumes_only_with_the_adapter_and_base_it_was_trained_with(tmp_path, was, now, train_from,
                                                                                  message):
    _artifact(tmp_path, "checkpoint-3", "checkpoint", was)
    plan = types.SimpleNamespace(state_from="checkpoint-3", weights_from=None)
    args = parse(*PEFT).peft
    if message is None:
        adapters.check_start(str(tmp_path), plan, args, now, train_from)
        return
    with pytest.raises(AdapterMismatch) as e:
        adapters.check_start(str(tmp_path), plan, args, now, train_from)
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("was, now, train_from, refused", [
    (None, _record(), "previous", "iter_0 holds no adapter (it was not written by a --use_peft run): "
                                  "--peft_iteration merge trains a fresh adapter on it"),
    (None, _record(mode="merge"), "previous", None),  # a fresh adapter on a full fine-tune's model
    (None, _record(), "base", None),  # every iteration trains a fresh adapter on the base
    (_record(), None, "previous", None),  # a full fine-tune goes on from the merged model
    (_record(), _record(mode="merge", config={"r": 8}), "previous", None),  # fresh adapter: any shape
    (_record(), _record(mode="merge", base_digest="bbbb"), "previous", "iter_0 was trained on the base model"),
])
def test_an_iteration_model_needs_its_adapter_only_to_continue_it(tmp_path, was, now, train_from, refused):
    _artifact(tmp_path, "iter_0", "iteration", was)
    plan = types.SimpleNamespace(state_from=None, weights_from="iter_0")
    args = parse(*PEFT).peft
    if refused is None:
        adapters.check_start(str(tmp_path), plan, args, now, train_from)
        return
    with pytest.raises(AdapterMismatch, match=refused.replace("(", r"\(").replace(")", r"\)")):
        adapters.check_start(str(tmp_path), plan, args, now, train_from)


def test_plain_hf_peft_checkpoint_is_recognised_by_its_adapter_files(tmp_path):
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    for f in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt"):
        (ckpt / f).write_text("x")
    (ckpt / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8, "lora_alpha": 8}')
    (ckpt / "trainer_state.json").write_text('{"global_step": 4, "max_steps": 8}')
    from itertrain.core import inventory

    [a], _ = inventory.scan(str(tmp_path), 8)
    assert (a.state, a.adapter) == ("unverified", True)
    assert a.contents() == "adapter weights + optimizer + scheduler states"
    assert adapters._recorded(str(tmp_path), "checkpoint-4") == (False, {"config": {"peft_type": "LORA", "r": 8,
                                                                                      "lora_alpha": 8}})
    plan = types.SimpleNamespace(state_from="checkpoint-4", weights_from=None)
    now = {"base": "b", "base_digest": "bb", "mode": "continue", "config": {"peft_type": "LORA", "r": 16,
                                                                            "lora_alpha": 8, "target_modules": None}}
    with pytest.raises(AdapterMismatch, match=r"checkpoint-4's adapter was made with other settings \(r: 8, this run 16\)"):
        adapters.check_start(str(tmp_path), plan, parse(*PEFT).peft, now, "previous")
    now["config"]["r"] = 8  # its target_modules (peft's expansion) are not compared
    adapters.check_start(str(tmp_path), plan, parse(*PEFT).peft, now, "previous")


def test_base_digest_reads_a_manifest_or_hashes_the_weights(tmp_path):
    tinymodel.write_base(str(tmp_path / "a"), 0)
    tinymodel.write_base(str(tmp_path / "b"), 0)
    tinymodel.write_base(str(tmp_path / "c"), 1)
    digest = adapters.base_digest
    assert digest(str(tmp_path / "a")) == digest(str(tmp_path / "b")) != digest(str(tmp_path / "c"))
    assert manifest.weights_digest(str(tmp_path / "gone")) is None


# ---- real runs ---------------------------------------------------------------------------------

def _run(flags=(), **kw):
    def build(work):
        out = work / "exp"
        proc = run_cli(out, *PEFT, *flags, **kw)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return out, proc.stdout
    return build


@pytest.fixture(scope="session")
def peft_ref(tmp_path_factory):
    return reference_run(tmp_path_factory, "peft_ref")


def same_run(out, ref):
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0
    assert _adapter_diff(out / "iter_1", ref / "iter_1") == 0.0
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


def _adapter_diff(a, b):
    from safetensors.torch import load_file

    wa, wb = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (a, b))
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.mark.e2e
def test_a_peft_run_writes_adapter_checkpoints_and_merged_iteration_models(peft_ref):
    out, stdout = peft_ref
    assert "🧩 PEFT: LORA adapter (r=4, alpha=32, on all-linear), --peft_iteration continue" in stdout
    ckpt = {p.name for p in (out / "checkpoint-12").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "scheduler.pt", "rng_state.pth",
            "trainer_state.json"} <= ckpt and "model.safetensors" not in ckpt
    it = out / "iter_1"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in it.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in (it / "adapter").iterdir()}
    m = manifest.read(str(it))
    assert "adapter/adapter_model.safetensors" in m["files"]
    record = manifest.read(str(out / "checkpoint-12"))["extra"]["peft"]
    assert record == m["extra"]["peft"] and record["base"] == str(out / "base") and record["mode"] == "continue"
    assert record["base_digest"] == adapters.base_digest(str(out / "base"))
    # what a user does with them: the merged model with transformers, the adapter with peft on the base
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 6, 14, 7, 15]])
    merged = AutoModelForCausalLM.from_pretrained(it).eval()
    on_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), it / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, on_base(ids).logits, atol=1e-5)


@pytest.mark.e2e
@pytest.mark.parametrize("point", ["train.step=4", "train.step=6", "train.step=9", "iteration.write=0",
                                   "checkpoint.write=12"])
def test_peft_crash_anywhere_resumes_bit_identically(peft_ref, tmp_path, point):
    out = tmp_path / "exp"
    killed_by(run_cli(out, *PEFT, failpoints=point), point)
    resume_until_done(out, *PEFT)
    same_run(out, peft_ref[0])


@pytest.mark.e2e
@pytest.mark.parametrize("flags, point", [
    (["--peft_iteration", "merge"], "train.step=9"),
    (["--peft_iteration", "merge", "--train_from", "base"], "train.step=4"),
    (["--carry_optimizer_state", "true"], "train.step=7"),  # resumed as "both": iter_0's adapter + checkpoint-6
    (["--async_save", "false"], "train.step=9"),
])
def test_peft_modes_crash_and_resume_bit_identically(tmp_path, flags, point):
    ref, out = tmp_path / "ref", tmp_path / "exp"
    assert run_cli(ref, *PEFT, *flags).returncode == 0
    killed_by(run_cli(out, *PEFT, *flags, failpoints=point), point)
    proc = resume_until_done(out, *PEFT, *flags)
    if "--carry_optimizer_state" in flags:
        assert "weights from iter_0 with the optimizer state of checkpoint-6" in proc.stdout
    same_run(out, ref)


@pytest.mark.e2e
def test_merge_trains_a_fresh_adapter_on_the_previous_iterations_model(tmp_path, peft_ref):
    out = tmp_path / "merge"
    assert run_cli(out, *PEFT, "--peft_iteration", "merge").returncode == 0
    assert max_diff(out / "iter_0", peft_ref[0] / "iter_0") == 0.0  # iteration 0 is the same in both modes
    assert max_diff(out / "iter_1", peft_ref[0] / "iter_1") > 0.0
    assert manifest.read(str(out / "iter_1"))["extra"]["peft"]["mode"] == "merge"
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 6, 14, 7, 15]])
    merged = AutoModelForCausalLM.from_pretrained(out / "iter_1").eval()
    on_prev = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "iter_0"), out / "iter_1" / "adapter")
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, on_prev.eval()(ids).logits, atol=1e-5)


@pytest.fixture(scope="session")
def peft_crashed(tmp_path_factory):
    """A --use_peft run on model0 killed at step 9 (iteration 1), after checkpoint-9 committed."""
    def build(work):
        out = work / "exp"
        killed_by(run_cli(out, *PEFT, "--model_name", str(_model(work, 0)), failpoints="train.step=9"), "train.step=9")
        return out
    return shared(tmp_path_factory, "peft_crashed", build)


@pytest.fixture(scope="session")
def peft_model0_ref(tmp_path_factory, peft_crashed):
    """The same run, uninterrupted."""
    return shared(tmp_path_factory, "peft_model0_ref", _run(("--model_name", str(peft_crashed.parent / "model0"))))[0]


def _start(out, *flags):
    return start_in_process(out, *PEFT, *flags)


PEFT_CHECKPOINT_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "curve.json", "itertrain.json",
                         "optimizer.pt", "rng_state.pth", "scheduler.pt", "tokenizer.json", "tokenizer_config.json",
                         "trainer_state.json", "training_args.bin"]
PEFT_ITERATION_FILES = ["adapter/README.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                        "config.json", "curve.json", "generation_config.json", "itertrain.json", "model.safetensors",
                        "tokenizer.json", "tokenizer_config.json"]


@pytest.mark.e2e
def test_the_corruption_matrix_names_every_file_of_an_adapter_run(peft_crashed):
    assert sorted(p.name for p in (peft_crashed / "checkpoint-9").iterdir()) == PEFT_CHECKPOINT_FILES
    it = peft_crashed / "iter_0"
    assert sorted(str(p.relative_to(it)) for p in it.rglob("*") if p.is_file()) == PEFT_ITERATION_FILES


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["delete", "truncate", "flip"])
@pytest.mark.parametrize("victim", [f for f in PEFT_CHECKPOINT_FILES if f != "itertrain.json"])
def test_adapter_checkpoint_file_damaged_falls_back_to_the_iteration_model(tmp_path, peft_crashed, victim, damage):
    assert_damaged_checkpoint_falls_back(peft_crashed, tmp_path, victim, damage, *PEFT)


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["delete", "truncate", "flip"])
@pytest.mark.parametrize("victim", [f for f in PEFT_ITERATION_FILES if f != "itertrain.json"])
def test_adapter_iteration_file_damaged_falls_back_to_the_checkpoint(tmp_path, peft_crashed, victim, damage):
    out = copy_experiment(peft_crashed, tmp_path / "exp")
    shutil.rmtree(out / "checkpoint-9")  # so that iter_0 is what auto selects
    {"delete": lambda p: p.unlink(), "truncate": truncate, "flip": flip}[damage](out / "iter_0" / victim)
    plan, text = _start(out, *AUTO)
    assert (plan.strategy, plan.state_from, plan.training_finished) == ("trainer", "checkpoint-6", True), text
    assert len(list(out.glob("iter_0.corrupt*"))) == 1
    assert any("iter_0" in line and victim in line for line in text.splitlines()), text


@pytest.mark.e2e
@pytest.mark.parametrize("victim", ["checkpoint-9/adapter_model.safetensors", "iter_0/adapter/adapter_model.safetensors"])
def test_a_damaged_adapter_is_set_aside_and_the_run_ends_as_the_uninterrupted_one(tmp_path, peft_crashed,
                                                                                   peft_model0_ref, victim):
    out = copy_experiment(peft_crashed, tmp_path / "exp")
    if victim.startswith("iter_0"):
        shutil.rmtree(out / "checkpoint-9")
    flip(out / victim)
    resume_until_done(out, *PEFT, "--model_name", str(peft_crashed.parent / "model0"))
    same_run(out, peft_model0_ref)
    assert len(list(out.glob(victim.split("/")[0] + ".corrupt*"))) == 1


def _model(where: Path, seed: int) -> Path:
    path = where / f"model{seed}"
    if not path.exists():
        tinymodel.write_base(str(path), seed)
    return path


@pytest.mark.e2e
@pytest.mark.parametrize("flags, message", [
    (["--model_name", "MODEL0", "--use_peft", "false"], "checkpoint-9 holds a PEFT adapter's training state, not the whole model's: resume "
                                 "with --use_peft and the adapter settings it was trained with"),
    ([*PEFT, "--model_name", "MODEL0", "--lora_r", "8"],
     "checkpoint-9's adapter was made with other settings (r: 4, this run 8): resume with the settings it was "
     "trained with"),
    ([*PEFT, "--model_name", "MODEL1"], "checkpoint-9 was trained on the base model MODEL0 (weights {0}), this run's "
                                        "is MODEL1 (weights {1}): resume with the base it was trained on"),
])
def test_a_resume_the_adapter_cannot_go_on_from_is_refused_before_anything_changes(peft_crashed, tmp_path, flags,
                                                                                   message):
    out = copy_experiment(peft_crashed, tmp_path / "exp")
    models = {"MODEL0": str(_model(peft_crashed.parent, 0)), "MODEL1": str(_model(tmp_path, 1))}
    digests = [adapters.base_digest(models[m]) for m in ("MODEL0", "MODEL1")]
    for key, path in models.items():
        flags, message = [f.replace(key, path) for f in flags], message.replace(key, path)
    before = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    proc = run_cli(out, *flags, *AUTO)  # a change that defines the experiment: refused by the record first
    assert proc.returncode == 2 and "--change_experiment true" in proc.stderr, proc.stderr[-2000:]
    proc = run_cli(out, *flags, *AUTO, "--change_experiment", "true")  # asked for: then the adapter's own check
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "itertrain: error: " + message.format(*digests)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == before


@pytest.mark.e2e
def test_a_full_fine_tunes_checkpoint_is_not_resumed_as_an_adapter(crashed_in_iter1, tmp_path):
    out = copy_experiment(crashed_in_iter1, tmp_path / "exp")
    proc = run_cli(out, *PEFT, *AUTO, "--change_experiment", "true")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
        "itertrain: error: checkpoint-9 holds a full model's training state: resume it without --use_peft, or start "
        "from another point")
    # a LoRA branch from its iteration model: merge mode trains a fresh adapter on it
    proc = run_cli(out, *PEFT, "--peft_iteration", "merge", "--resume_from", "none", "--resume_from_iteration", "iter_0",
                   "--change_experiment", "true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert manifest.read(str(out / "iter_1"))["extra"]["peft"]["mode"] == "merge"


@pytest.mark.dist
def test_peft_under_two_ranks_resumes_bit_identically(tmp_path_factory, tmp_path):
    ref = shared(tmp_path_factory, "peft_two_ranks", _run(launcher=TORCHRUN, timeout=600))[0]
    out = tmp_path / "exp"
    killed_by(run_cli(out, *PEFT, launcher=TORCHRUN, failpoints="train.step=9", timeout=600), "train.step=9",
              leaves=out / "checkpoint-9")
    proc = run_cli(out, *PEFT, *AUTO, launcher=TORCHRUN, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_run(out, ref)


@pytest.mark.e2e
def test_a_plain_hf_peft_checkpoint_is_adopted_and_resumed(tmp_path):
    """A plain HF Trainer + peft run stopped at checkpoint-4 of 8: itertrain resumes its adapter."""
    import subprocess
    import sys

    start = _model(tmp_path, 0)
    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "plain_hf.py"), str(start), str(out), "8", "4",
                           "--peft"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.rmtree(out / "checkpoint-8")
    proc = run_cli(out, *PEFT[:2], "--lora_r", "8", "--lora_alpha", "8", "--model_name", str(start), "--max_steps", "8",
                   "--resume_from", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "adapter weights + optimizer + scheduler states" in proc.stdout
    assert "iteration 0: training on 64 examples from base, resuming checkpoint-4, global steps 5-8" in proc.stdout

