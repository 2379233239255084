"""Every flag that needs another is refused without it, in one line, and applied with it (app/needs.py)."""

import pytest

from itertrain.app import config, needs
from itertrain.core.errors import UsageError

FILES = ["--train_prompts", "t.jsonl", "--eval_prompts", "e.jsonl"]
# a flag of each rule: (flag and value, what gives it a meaning)
CASES = [
    (["--verifier", "numeric"], FILES),
    (["--prompt_field", "question"], FILES),
    (["--answer_field", "label"], ["--sft_data", "g.jsonl"]),
    (["--chat_template", "none"], None),  # needs a model directory: the refusal only
    (["--num_gold", "10"], []),
    (["--num_prompts", "10"], []),
    (["--num_eval", "10"], []),
    (["--gold_iterations", "1"], [*FILES, "--sft_data", "g.jsonl"]),
    (["--vllm_python", "/usr/bin/python3"], ["--generation_backend", "vllm"]),
    (["--vllm_gpu_memory_utilization", "0.5"], ["--generation_backend", "vllm"]),
    (["--vllm_enforce_eager", "true"], ["--generation_backend", "vllm"]),
    (["--lora_r", "4"], ["--use_peft", "true"]),
    (["--lora_alpha", "8"], ["--use_peft", "true"]),
    (["--lora_dropout", "0.1"], ["--use_peft", "true"]),
    (["--lora_target_modules", "q_proj"], ["--use_peft", "true"]),
    (["--lora_modules_to_save", "lm_head"], ["--use_peft", "true"]),
    (["--use_rslora", "true"], ["--use_peft", "true"]),
    (["--use_dora", "true"], ["--use_peft", "true"]),
    (["--peft_iteration", "merge"], ["--use_peft", "true"]),
    (["--bnb_4bit_quant_type", "fp4"], None),  # needs a CUDA GPU: the refusal only
    (["--use_bnb_nested_quant", "true"], None),
    (["--sft_iterations", "1"], ["--objective", "dpo"]),
    (["--pairs_per_prompt", "3"], ["--objective", "dpo"]),
    (["--dpo_gold_chosen", "true"], ["--objective", "dpo"]),
    (["--dpo_reference", "previous"], ["--objective", "dpo"]),
    (["--dpo_learning_rate", "0.001"], ["--objective", "dpo"]),
    (["--dpo_beta", "0.2"], ["--objective", "dpo"]),
    (["--dpo_loss_type", "ipo"], ["--objective", "dpo"]),
    (["--dpo_label_smoothing", "0.1"], ["--objective", "dpo"]),
    (["--dpo_args", "{}"], ["--objective", "dpo"]),
    *((flags, ["--objective", "grpo"]) for flags in (
        ["--num_generations", "4"], ["--max_completion_length", "4"], ["--beta", "0.1"], ["--epsilon", "0.3"],
        ["--epsilon_high", "0.3"], ["--loss_type", "grpo"], ["--scale_rewards", "batch"],
        ["--steps_per_generation", "2"], ["--grpo_epochs", "2"], ["--mask_truncated_completions", "true"],
        ["--reward_funcs", "plugins:digits"], ["--reward_weights", "1"], ["--grpo_learning_rate", "0.001"],
        ["--grpo_args", "{}"])),
    *((flags, ["--objective", "grpo", "--sft_iterations", "1"]) for flags in (
        ["--num_samples", "3"], ["--max_per_prompt", "2"], ["--generation_batch_size", "4"],
        ["--generation_shard_size", "512"], ["--reuse_previous", "true"], ["--generation_order", "file"])),
    *((flags, ["--objective", "grpo", "--sft_iterations", "1", "--max_steps", "1"]) for flags in (
        ["--padding_free", "false"], ["--max_tokens_per_batch", "64"])),
    (["--mirror_keep", "3"], ["--mirror_to", "file:///tmp/unused-needs-mirror"]),
    (["--mirror_grace", "5"], ["--mirror_to", "file:///tmp/unused-needs-mirror"]),
]
# what the refusal is tried with, where the defaults would give the flag its meaning
WITHOUT = {"--num_gold": FILES, "--num_prompts": FILES, "--num_eval": FILES, "--gold_iterations": FILES,
           **dict.fromkeys(("--num_samples", "--max_per_prompt", "--generation_batch_size", "--generation_shard_size",
                            "--reuse_previous", "--generation_order"), ["--objective", "grpo"]),
           **dict.fromkeys(("--padding_free", "--max_tokens_per_batch"), ["--objective", "grpo", "--max_steps", "1"])}


def parse(*flags):
    return config.parse(["--output_dir", "/tmp/unused-needs", *flags])


@pytest.mark.parametrize("flag, partner", CASES, ids=[c[0][0] for c in CASES])
def test_a_flag_without_what_it_needs_is_refused_and_applied_with_it(flag, partner):
    with pytest.raises(UsageError) as e:
        parse(*flag, *WITHOUT.get(flag[0], []))
    assert str(e.value).startswith(f"{flag[0]} needs ") and "\n" not in str(e.value)
    if partner is not None:
        cfg = parse(*flag, *partner)
        name = flag[0][2:]
        value = next(getattr(part, name) for part in (cfg.it, cfg.peft, cfg.obj, cfg.mirror, *cfg.objective_args.values(),
                                                      cfg.train) if hasattr(part, name))
        number = str(float(flag[1])) if flag[1][0].isdigit() else ""
        assert str(value).lower() in (flag[1].lower(), f"['{flag[1]}']", number, f"[{number}]")


def test_every_rule_is_tested():
    tested = {c[0][0][2:] for c in CASES}
    assert {f for flags, _, _ in needs.rules() for f in flags} - tested == set()
