"""PEFT adapters (LoRA and the other peft methods that merge into the weights), through `peft`.

What a PEFT run trains in iteration K is a frozen model plus an adapter:
  continue (default)  the base model B, always, and one adapter trained on across iterations
                      (iteration K starts from iter_{K-1}/adapter); B is never written
  merge               iter_{K-1}'s model (B for K=0) and a fresh adapter, seeded by (--seed, K)
With --train_from base both train a fresh adapter on B every iteration.

On disk: a trainer checkpoint holds the adapter (not the frozen model) with the optimizer, scheduler
and RNG state, as HF's Trainer writes it; iter_K holds the adapter merged into the frozen model's
weights (in fp32, cast back to each weight's dtype) as an ordinary model directory, which generates
and evaluates, and the adapter itself in iter_K/adapter/. Each manifest records the run's base
(path and a digest of its weights), the mode and the adapter's configuration; `check_start` refuses
a resume that would train something else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import xxhash

from itertrain.core import manifest
from itertrain.core.errors import AdapterError, AdapterMismatch

CONTINUE, MERGE = "continue", "merge"
ADAPTER_DIR = "adapter"  # iter_K/adapter: the adapter of iteration K, as peft saves it
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class PeftArguments:
    """LoRA / PEFT flags, with the names of TRL's ModelConfig."""

    use_peft: bool = field(default=False, metadata={
        "help": "Train a PEFT adapter (LoRA unless --peft_config says otherwise) on a frozen model instead of every "
                "weight (docs/peft.md)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA layers' input."})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "Modules to adapt: names or all-linear. Default: peft's choice for the architecture "
                "(q_proj and v_proj for Llama)."})
    lora_modules_to_save: list[str] | None = field(default=None, metadata={
        "help": "Modules trained in full and saved with the adapter (e.g. lm_head)."})
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA (scale alpha / sqrt(r))."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})
    peft_config: str | None = field(default=None, metadata={
        "help": "A PEFT config JSON file (an adapter_config.json; any peft method that merges into the weights) "
                "instead of the --lora_* flags; implies --use_peft."})
    peft_iteration: str = field(default=CONTINUE, metadata={
        "choices": [CONTINUE, MERGE],
        "help": "continue: one adapter trained across iterations on the frozen base; merge: each iteration's "
                "adapter merged into the weights and a fresh one trained on them in the next."})
    load_in_4bit: bool = field(default=False, metadata={
        "help": "QLoRA: the frozen model in 4 bits (bitsandbytes; CUDA GPUs only)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "The frozen model in 8 bits (bitsandbytes; CUDA GPUs only)."})
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"choices": ["nf4", "fp4"], "help": "4-bit type."})
    use_bnb_nested_quant: bool = field(default=False, metadata={"help": "Quantize the 4-bit quantization constants."})


LORA_FLAGS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_modules_to_save", "use_rslora",
              "use_dora")


def validate(args: PeftArguments, train, it) -> None:
    """Refuse what cannot run, in one line (AdapterError), before anything is written."""
    if args.peft_config:
        changed = [f"--{f}" for f in LORA_FLAGS if getattr(args, f) != PeftArguments.__dataclass_fields__[f].default]
        if changed:
            raise AdapterError(f"--peft_config {args.peft_config} gives the adapter: drop {', '.join(changed)}")
        args.use_peft = True
    quantized = args.load_in_4bit or args.load_in_8bit
    if quantized and not args.use_peft:
        raise AdapterError("--load_in_4bit / --load_in_8bit quantize the frozen model of a PEFT run: add --use_peft")
    if not args.use_peft:
        return
    if args.load_in_4bit and args.load_in_8bit:
        raise AdapterError("--load_in_4bit and --load_in_8bit: choose one")
    if quantized:
        import torch

        if train.use_cpu or not torch.cuda.is_available():
            raise AdapterError(f"--load_in_{'4' if args.load_in_4bit else '8'}bit (QLoRA) needs a CUDA GPU: "
                               "bitsandbytes quantizes on the GPU, and this run has none")
    if args.lora_r < 1 or args.lora_alpha <= 0 or not 0 <= args.lora_dropout < 1:
        raise AdapterError("--lora_r must be >= 1, --lora_alpha > 0 and --lora_dropout in [0, 1)")
    if args.peft_iteration == MERGE and it.carry_optimizer_state:
        raise AdapterError("--peft_iteration merge trains a fresh adapter every iteration, so there is no optimizer "
                           "state to carry: drop --carry_optimizer_state, or use --peft_iteration continue")
    if train.deepspeed and _zero_stage(train.deepspeed) == 3 or train.fsdp:
        raise AdapterError("--use_peft runs with DDP or DeepSpeed ZeRO-1/2 (an adapter's state is small); "
                           "ZeRO-3 and FSDP are not supported with it")
    config(args)  # a bad --peft_config or flag value fails here


def _zero_stage(ds) -> int | None:
    if isinstance(ds, str):
        try:
            with open(ds, encoding="utf-8") as f:
                ds = json.load(f)
        except (OSError, ValueError):
            return None  # HF reports an unreadable DeepSpeed config itself
    return (ds or {}).get("zero_optimization", {}).get("stage") if isinstance(ds, dict) else None


def config(args: PeftArguments):
    """The peft config this run asks for (a fresh object each call: peft fills it in when it builds)."""
    import peft

    if args.peft_config:
        try:
            kwargs = peft.PeftConfig.from_json_file(args.peft_config)
        except (OSError, ValueError) as e:
            raise AdapterError(f"--peft_config {args.peft_config}: not a readable JSON file ({e})") from None
        kind = str(kwargs.get("peft_type", "")).upper()
        if kind not in {t.value for t in peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING}:
            raise AdapterError(f"--peft_config {args.peft_config}: peft_type {kwargs.get('peft_type')!r} is not a "
                               "peft method")
        cls = peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING[peft.PeftType(kind)]
        known = set(cls.__dataclass_fields__)
        try:
            made = cls(**{k: v for k, v in kwargs.items() if k in known})
        except (TypeError, ValueError) as e:
            raise AdapterError(f"--peft_config {args.peft_config}: {str(e).splitlines()[0]}") from None
        if made.is_prompt_learning:
            raise AdapterError(f"--peft_config {args.peft_config}: {kind} adds virtual tokens and cannot be merged into "
                               "the weights; iteration models must be ordinary models (use LoRA or another method "
                               "that merges)")
        made.task_type = "CAUSAL_LM"
        return made
    targets = args.lora_target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"  # peft's keyword, as a string
    try:
        return peft.LoraConfig(task_type="CAUSAL_LM", r=args.lora_r, lora_alpha=args.lora_alpha,
                               lora_dropout=args.lora_dropout, target_modules=targets, bias="none",
                               modules_to_save=args.lora_modules_to_save, use_rslora=args.use_rslora,
                               use_dora=args.use_dora)
    except (TypeError, ValueError) as e:
        raise AdapterError(f"--use_peft: {str(e).splitlines()[0]}") from None


def requested(args: PeftArguments) -> dict:
    """The adapter's settings as recorded in manifests (what a resume must match)."""
    made = json.loads(json.dumps(config(args).to_dict(), default=_plain, sort_keys=True))
    return {k: v for k, v in made.items() if k not in UNRECORDED}


# Not the adapter's shape or training: where it was loaded from, and the library's version.
UNRECORDED = ("peft_version", "base_model_name_or_path", "revision", "inference_mode")


def _plain(value):
    return sorted(value) if isinstance(value, (set, frozenset)) else str(getattr(value, "value", value))


def record(args: PeftArguments, base_dir: str) -> dict:
    """Rank 0: what every manifest of this run records about its adapter."""
    return {"base": base_dir, "base_digest": base_digest(base_dir), "mode": args.peft_iteration,
            "config": requested(args)}


def base_digest(model_dir: str) -> str:
    """A short identity of a model directory's weights (from its manifest's checksums when it has one)."""
    return xxhash.xxh3_64_hexdigest((manifest.weights_digest(model_dir) or "").encode())


def frozen_model(args: PeftArguments, base_dir: str, model_k: str, train_from: str) -> str:
    """The model an iteration's adapter is trained on (module docstring)."""
    return model_k if args.peft_iteration == MERGE and train_from == "previous" else base_dir


def adapter_in(weights: str, frozen: str) -> str | None:
    """Where the adapter to train on comes from: a checkpoint (HF saves it at its top), an iteration
    model's adapter/ in continue mode, or nowhere (a fresh adapter on the frozen model)."""
    if os.path.realpath(weights) == os.path.realpath(frozen):
        return None
    if os.path.isfile(os.path.join(weights, ADAPTER_CONFIG)):
        return weights
    if os.path.isfile(os.path.join(weights, ADAPTER_DIR, ADAPTER_CONFIG)):
        return os.path.join(weights, ADAPTER_DIR)
    raise AdapterMismatch(f"{weights} holds no adapter to train on (it was not written by a --use_peft run)")


def training_model(args: PeftArguments, weights: str, frozen: str, *, seed: int, iteration: int, load):
    """The frozen model with its adapter, trainable: loaded from `weights` (adapter_in), or fresh and
    seeded by (seed, iteration) so that a resume makes the same one."""
    import torch
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    source = adapter_in(weights, frozen)
    model = _load_quantized(args, frozen) if args.load_in_4bit or args.load_in_8bit else load(frozen)
    if args.load_in_4bit or args.load_in_8bit:
        model = prepare_model_for_kbit_training(model)
    if source is not None:
        return PeftModel.from_pretrained(model, source, is_trainable=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(xxhash.xxh3_64_intdigest(f"itertrain/adapter/{seed}/{iteration}".encode()) & (2**63 - 1))
        return get_peft_model(model, config(args))


def _load_quantized(args: PeftArguments, path: str):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=args.load_in_4bit, load_in_8bit=args.load_in_8bit,
                               bnb_4bit_quant_type=args.bnb_4bit_quant_type,
                               bnb_4bit_use_double_quant=args.use_bnb_nested_quant,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=quant,
                                                device_map={"": torch.cuda.current_device()})


def is_peft(model) -> bool:
    from transformers.trainer import _is_peft_model

    return _is_peft_model(model)


def trainable_state(model) -> dict:
    """The entries of `model`'s state dict that an adapter checkpoint holds: the trainable ones
    (peft's save keeps those of them that belong to the adapter)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


def finish(model, into: str, frozen: str, args: PeftArguments):
    """Rank 0, after training: the adapter saved into `into`, then merged into the frozen model's
    weights; returns that merged model (ordinary, no peft layers)."""
    model.save_pretrained(into)
    if args.load_in_4bit or args.load_in_8bit:  # merged into the frozen model as stored, not quantized
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        device = next(model.parameters()).device
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(frozen), into).to(device)
    return merged(model)


def finish_on_main(model, output_dir: str, frozen: str, args: PeftArguments):
    """Every rank: `finish` on rank 0, the adapter staged as ADAPTER_DIR in output_dir's staging
    (the iteration's save moves it into iter_K); the merged model on rank 0, None on the others."""
    from itertrain.core import commit
    from itertrain.runtime import dist

    box = []

    def run() -> None:
        box.append(finish(model, commit.fresh_staging(output_dir, ADAPTER_DIR), frozen, args))

    dist.on_main(run)
    return box[0] if box else None


def merged(model):
    """The adapter merged into the weights layer by layer in fp32 (whatever the training dtype),
    each weight cast back to its own dtype; the plain model, peft's layers removed."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and not module.merged:
            dtype = module.get_base_layer().weight.dtype
            module.to(torch.float32)
            module.merge()
            module.to(dtype)
    return model.unload()


def _recorded(output_dir: str, name: str) -> tuple[bool, dict | None]:
    """(written by itertrain, its adapter record or None). An artifact without our manifest that
    holds an adapter (a plain HF + peft checkpoint) records only its adapter_config.json."""
    path = os.path.join(output_dir, name)
    if manifest.exists(path):
        try:
            return True, manifest.read(path).get("extra", {}).get("peft")
        except manifest.ManifestError:
            return True, None
    for where in (path, os.path.join(path, ADAPTER_DIR)):
        try:
            with open(os.path.join(where, ADAPTER_CONFIG), encoding="utf-8") as f:
                return False, {"config": json.load(f)}
        except (OSError, ValueError):
            continue
    return False, None


# What an adapter_config.json written elsewhere must agree on (its target_modules are peft's expansion
# of what was asked, and cannot be compared with the flags).
FOREIGN_KEYS = ("peft_type", "r", "lora_alpha", "use_rslora", "use_dora")


def check_start(output_dir: str, plan, args: PeftArguments, now: dict | None, train_from: str) -> None:
    """Rank 0, before anything is renamed: refuse (AdapterMismatch naming both sides) a start whose
    checkpoint or iteration model this run's adapter settings cannot go on from."""
    for name, checkpoint in ((plan.state_from, True), (plan.weights_from, False)):
        if not name:
            continue
        ours, was = _recorded(output_dir, name)
        needs_adapter = checkpoint or (now is not None and now["mode"] == CONTINUE and train_from == "previous")
        if now is None:
            if checkpoint and was is not None:
                raise AdapterMismatch(f"{name} holds a PEFT adapter's training state, not the whole model's: resume with "
                                     "--use_peft and the adapter settings it was trained with")
            continue
        if was is None:
            if needs_adapter:
                what = "a full model's training state" if checkpoint else "no adapter (it was not written by a " \
                                                                              "--use_peft run)"
                hint = "resume it without --use_peft" if checkpoint else "--peft_iteration merge trains a fresh " \
                                                                             "adapter on it"
                raise AdapterMismatch(f"{name} holds {what}: {hint}, or start from another point")
            continue
        if ours and was["base_digest"] != now["base_digest"]:
            raise AdapterMismatch(f"{name} was trained on the base model {was['base']} (weights {was['base_digest']}), "
                               f"this run's is {now['base']} (weights {now['base_digest']}): resume with the base it "
                               "was trained on")
        if needs_adapter:
            # (a setting only one side knows is a newer peft's, at its default)
            keys = set(was["config"]) & set(now["config"]) & (set(now["config"]) if ours else set(FOREIGN_KEYS))
            diffs = [(k, was["config"][k], now["config"][k]) for k in sorted(keys) if was["config"][k] != now["config"][k]]
            if ours and checkpoint and was["mode"] != now["mode"]:
                diffs.insert(0, ("peft_iteration", was["mode"], now["mode"]))
            if diffs:
                raise AdapterMismatch(f"{name}'s adapter was made with other settings ("
                                     + "; ".join(f"{k}: {a!r}, this run {b!r}" for k, a, b in diffs[:3])
                                     + "): resume with the settings it was trained with")


def describe(args: PeftArguments) -> str:
    """One line for the banner."""
    c = requested(args)
    what = c.get("peft_type", "LORA")
    shape = f"r={c.get('r')}, alpha={c.get('lora_alpha')}, " if what == "LORA" else ""
    targets = c.get("target_modules") or "peft's default modules"
    return f"🧩 PEFT: {what} adapter ({shape}on {targets if isinstance(targets, str) else ', '.join(targets)}), " \
           f"--peft_iteration {args.peft_iteration}"

