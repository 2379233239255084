"""Training batches without padding, by tokens, and generation in length order (training/batches.py,
phases/samples.generation_order)."""

import json

import pytest
import torch
import transformers
from chaos_harness import AUTO
from conftest import max_diff, run_cli, shared, weights

from itertrain.core.errors import UsageError
from itertrain.phases import samples
from itertrain.tasks import Example, tinymodel
from itertrain.training import batches
from itertrain.training.data import IGNORE, Collator, encode


def tiny(kind: str, **kw):
    torch.manual_seed(0)
    config = {"llama": lambda: transformers.LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                                         num_attention_heads=2, intermediate_size=32, **kw),
              "opt": lambda: transformers.OPTConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                                     num_attention_heads=2, word_embed_proj_dim=16, **kw)}[kind]()
    return transformers.AutoModelForCausalLM.from_config(config)


FEATURES = [{"input_ids": [1] * n, "labels": [IGNORE] * (n // 2) + [1] * (n - n // 2)} for n in (5, 9, 2, 7, 3)]


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("budget", [1, 6, 11, 12, 100])
def test_a_batch_is_split_into_runs_of_whole_examples_within_the_budget(flat, budget):
    collate = transformers.DataCollatorWithFlattening(return_position_ids=True) if flat else Collator(0)
    batch = collate(FEATURES)
    parts = batches.split(batch, budget)
    lengths = [batches.tokens(p) for p in parts]
    every = [n for run in lengths for n in run]  # every example once: in order packed, shortest first padded
    assert every == ([5, 9, 2, 7, 3] if flat or len(parts) == 1 else [2, 3, 5, 7, 9])
    assert all(sum(run) <= budget or len(run) == 1 for run in lengths)
    assert all(sum(a) + b[0] > budget for a, b in zip(lengths, lengths[1:], strict=False))  # runs are filled
    labels = sum(int((p["labels"][..., 1:] != IGNORE).sum()) for p in parts)
    assert labels == int((batch["labels"][..., 1:] != IGNORE).sum())  # no target lost or added at a cut
    if not flat:
        assert all(p["input_ids"].shape[1] == max(run) for p, run in zip(parts, lengths, strict=True))


def test_a_split_step_of_a_model_without_loss_kwargs_trains_what_the_whole_batch_trains(tmp_path):
    """A model that takes no loss kwargs gets no answer-token count from HF: each pass's mean loss is
    then weighted by its share of the batch's answer tokens, so the step is the whole batch's mean."""
    class Budgeted(batches.TokenBudget, transformers.Trainer):
        pass

    ids = [[(7 * i + 3 * j) % 31 + 1 for j in range(len(f["input_ids"]))] for i, f in enumerate(FEATURES)]
    varied = [{"input_ids": x, "labels": [t if y != IGNORE else IGNORE for t, y in zip(x, f["labels"], strict=True)]}
              for x, f in zip(ids, FEATURES, strict=True)]  # distinct tokens: passes of one mean loss hide a bad weight

    def one_step(budget):
        model = tiny("llama")
        model.accepts_loss_kwargs = False
        args = transformers.TrainingArguments(str(tmp_path / str(budget)), max_steps=1, per_device_train_batch_size=5,
                                              learning_rate=0.1, optim="sgd", max_grad_norm=0, report_to=[],
                                              save_strategy="no", use_cpu=True, disable_tqdm=True)
        t = Budgeted(model=model, args=args, train_dataset=varied, data_collator=Collator(0))
        t.max_tokens_per_batch = budget
        assert t.model_accepts_loss_kwargs is False
        t.train()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    whole, split = one_step(None), one_step(6)  # 6 tokens: the 5 examples in 4 passes
    assert len(batches.split(Collator(0)(FEATURES), 6)) == 4
    assert max((whole[k] - split[k]).abs().max().item() for k in whole) < 1e-6
    assert max((whole[k] - tiny("llama").state_dict()[k]).abs().max().item() for k in whole) > 1e-3  # it trained


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_model_that_keeps_packed_examples_apart_trains_padding_free_where_asked_or_with_flash_attention(
        attention, monkeypatch):
    said = []
    monkeypatch.setattr(batches, "_said", set())
    monkeypatch.setattr(batches.dist, "log0", said.append)
    model = tiny("llama", attn_implementation=attention)
    assert batches.leaks(model) is None
    assert isinstance(batches.collator(model, 0, True), transformers.DataCollatorWithFlattening)
    assert isinstance(batches.collator(model, 0, False), Collator)
    # by default only where the attention takes packed examples one by one (flash attention's kernels),
    # and elsewhere without running the model to check it
    monkeypatch.setattr(batches, "leaks", lambda m: pytest.fail("the model was run for a default that pads"))
    assert isinstance(batches.collator(model, 0, None), Collator) and len(said) == 1
    assert f"{attention} attention attends over a padding-free batch as one sequence" in said[0]
    monkeypatch.setattr(batches, "leaks", lambda m: None)
    monkeypatch.setattr(batches, "attention_of", lambda m: "flash_attention_2")
    assert isinstance(batches.collator(model, 0, None), transformers.DataCollatorWithFlattening)


def test_a_model_whose_packed_examples_see_each_other_pads_or_refuses(monkeypatch):
    said = []
    monkeypatch.setattr(batches, "_said", set())
    monkeypatch.setattr(batches.dist, "log0", said.append)
    model = tiny("opt")
    assert "lets packed examples attend to each other" in batches.leaks(model)
    assert isinstance(batches.collator(model, 0, None), Collator) and isinstance(batches.collator(model, 0, None), Collator)
    assert len(said) == 1 and "padded training batches" in said[0]  # said once
    with pytest.raises(UsageError, match=r"^--padding_free true: OPTForCausalLM .* attend to each other"):
        batches.collator(model, 0, True)
    # a cache kept in training turns transformers' packed masks off: the probe is not even asked
    assert isinstance(batches.collator(tiny("llama"), 0, None, use_cache=True), Collator)
    with pytest.raises(UsageError, match="--use_cache true"):
        batches.collator(tiny("llama"), 0, True, use_cache=True)


def test_packed_logits_are_each_examples_own():
    model = tiny("llama").eval()
    feats = encode([Example("ab", "cde"), Example("a", "b"), Example("abcd", "e")], _Chars())
    flat = transformers.DataCollatorWithFlattening(return_position_ids=True)(feats)
    padded = Collator(0)(feats)
    with torch.no_grad():
        packed = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"], use_cache=False).logits[0]
        rows = model(**{k: v for k, v in padded.items() if k != "labels"}, use_cache=False).logits
    at = 0
    for i, f in enumerate(feats):
        n = len(f["input_ids"])
        assert (packed[at:at + n] - rows[i, :n]).abs().max().item() < 1e-5
        at += n
    # the loss is on the same tokens: answers and EOS, never across an example's start
    assert int((flat["labels"] != IGNORE).sum()) == int((padded["labels"] != IGNORE).sum())


class _Chars:
    eos_token_id = 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + (ord(c) % 20) for c in text]}


def test_generation_order_is_longest_first_by_tokens_and_a_function_of_the_prompts():
    prompts = ["aa", "a", "aaaa", "aaa", "aa", ""]
    assert samples.generation_order(prompts, _Tokens(), "length") == [2, 3, 0, 4, 1, 5]
    assert samples.generation_order(prompts, _Tokens(), "file") == list(range(6))


class _Tokens:
    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [list(t) for t in texts]}


@pytest.fixture(scope="session")
def example_model(tmp_path_factory):
    return shared(tmp_path_factory, "instruct_model", lambda w: (tinymodel.write_chat_model(str(w / "m"), 0), w / "m")[1])


def example(model) -> list[str]:
    from chaos_harness import example_flags

    return [*example_flags(model), "--per_device_train_batch_size", "8"]


@pytest.mark.e2e
def test_padding_free_and_token_budgets_train_what_padded_batches_train(tmp_path, example_model):
    """The example's variable-length data: padding-free, padded and split into passes differ only as float
    reduction order allows, and identically by iteration (the samples of iteration 1 are the same)."""
    flags = example(example_model)
    runs = {name: tmp_path / name for name in ("free", "padded", "budget")}
    for name, extra in (("free", ["--padding_free", "true"]), ("padded", []),
                        ("budget", ["--max_tokens_per_batch", "400"])):
        proc = run_cli(runs[name], *flags, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for k in (0, 1):
        for other in ("padded", "budget"):
            assert max_diff(runs["free"] / f"iter_{k}", runs[other] / f"iter_{k}") < 1e-5
    rows = {n: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for n, d in runs.items()}
    for a, b in zip(rows["free"], rows["budget"], strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5 and a["num_train_samples"] == b["num_train_samples"]
    assert weights(runs["free"] / "iter_1").keys() == weights(runs["padded"] / "iter_1").keys()


@pytest.mark.e2e
def test_split_batches_killed_in_training_resume_bit_identically(tmp_path, example_model):
    flags = [*example(example_model), "--padding_free", "true", "--max_tokens_per_batch", "400"]
    ref = tmp_path / "ref"
    assert run_cli(ref, *flags).returncode == 0
    out = tmp_path / "run"
    assert run_cli(out, *flags, failpoints="train.step=8").returncode == 137
    proc = run_cli(out, *flags, *AUTO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert max_diff(out / "iter_1", ref / "iter_1") == 0.0
    assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


def test_bad_token_budgets_are_refused_in_one_line():
    from itertrain.app import config

    with pytest.raises(UsageError, match="^--max_tokens_per_batch must be >= 1, got 0$"):
        config.parse(["--output_dir", "/tmp/unused-batches", "--max_tokens_per_batch", "0"])
