"""The HF backend's batched call: its samples are HF generate's own, prompts prefilled once."""

import pytest
import torch

from itertrain.phases import generate
from itertrain.phases.generate import complete
from itertrain.tasks.addition import make_task
from itertrain.tasks.tinymodel import make_model, make_tokenizer

TOK = make_tokenizer()
SAMPLING = dict(do_sample=True, temperature=1.0, top_k=None, top_p=None, max_new_tokens=8)


def hf_generate(model, prompts, n, **kw):
    TOK.padding_side = "left"
    enc = TOK(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, pad_token_id=TOK.pad_token_id, eos_token_id=TOK.eos_token_id,
                             num_return_sequences=n, **kw)
    return TOK.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("n", [1, 4])
def test_samples_are_hf_generates_own(n):
    model = make_model(3, len(TOK)).eval()
    prompts = [e.prompt for e in make_task(seed=1, num_gold=1, num_prompts=64, num_eval=1).train_prompts]
    assert len({len(TOK(p)["input_ids"]) for p in prompts}) > 1  # left padding is exercised
    torch.manual_seed(7)
    want = hf_generate(model, prompts, n, **SAMPLING)
    torch.manual_seed(7)
    assert complete(model, TOK, prompts, num_return_sequences=n, **SAMPLING) == want


def test_the_prompts_are_run_once_not_once_per_sample():
    model = make_model(3, len(TOK)).eval()
    rows = []
    model.register_forward_pre_hook(lambda m, args, kw: rows.append(kw["input_ids"].shape), with_kwargs=True)
    complete(model, TOK, ["12+34=", "5+6="], num_return_sequences=4, **SAMPLING)
    assert rows[0][0] == 2 and all(r == (8, 1) for r in rows[1:])  # prompts once, then 8 rows a token at a time


def test_only_decoder_only_hf_models_generating_with_a_cache_are_prefilled_once():
    model = make_model(3, len(TOK)).eval()
    assert generate._prefills_once(model) and not generate._prefills_once(model, use_cache=False)
    assert not generate._prefills_once(torch.nn.Linear(2, 2))
    model.generation_config.use_cache = False  # the others take HF's own path (n=1 above: the same as HF's)
    rows = []
    model.register_forward_pre_hook(lambda m, args, kw: rows.append(kw["input_ids"].shape), with_kwargs=True)
    complete(model, TOK, ["12+34="], num_return_sequences=4, **SAMPLING)
    assert rows[0] == (4, 6)  # every prompt once per sample


def test_finished_sequences_leave_the_batch_and_greedy_completions_are_hf_generates(monkeypatch):
    """Rounds of 4 tokens: a row that produced the EOS leaves the batch (and its cache) after its round;
    greedy, what every row gets is what HF's one generate call gives it."""
    import copy

    from transformers import LlamaForCausalLM

    from itertrain.tasks.tinymodel import make_config

    config = make_config(len(TOK))
    config.tie_word_embeddings = False  # (tied, the tiny model's greedy rows all repeat one token)
    torch.manual_seed(3)
    model = LlamaForCausalLM(config).eval()
    prompts = [e.prompt for e in make_task(seed=1, num_gold=1, num_prompts=32, num_eval=1).train_prompts]
    greedy = dict(do_sample=False, max_new_tokens=24)
    tok = copy.deepcopy(TOK)
    outs = hf_generate(model, prompts, 1, **greedy)
    assert len(set(outs)) > 8
    # an end token some rows produce early and others late or never: the commonest 4th character
    fourth = [o[3] for o in outs if len(o) > 3]
    tok.eos_token = max(set(fourth), key=fourth.count)
    TOK.padding_side = "left"
    enc = TOK(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **greedy)
    want = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    monkeypatch.setattr(generate, "ROUND", 4)
    rows = []
    model.register_forward_pre_hook(lambda m, args, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    assert complete(model, tok, prompts, **greedy) == want
    assert rows[0] == len(prompts) and rows[-1] < len(prompts)  # finished rows left
    assert rows == sorted(rows, reverse=True)
