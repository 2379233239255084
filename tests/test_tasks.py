"""Tasks, verifiers, selection and the training set: pure and fast."""

import json
import sys
import textwrap

import pytest

from itertrain.phases.samples import select, training_set
from itertrain.tasks import Example, TaskError, exact, files, load_task, numeric, read_data
from itertrain.tasks.verifiers import named as verifier


def args(**kw):
    from itertrain.app.config import IterArguments

    return IterArguments(**{**dict(num_gold=10, num_prompts=20, num_eval=5), **kw})


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_builtin_addition_is_disjoint_and_fixed_by_seed():
    t = load_task(args(), seed=3)
    assert (len(t.gold), len(t.train_prompts), len(t.eval_prompts)) == (10, 20, 5)
    prompts = [e.prompt for e in t.gold + t.train_prompts + t.eval_prompts]
    assert len(set(prompts)) == len(prompts)
    assert [e.prompt for e in load_task(args(), seed=3).eval_prompts] == [e.prompt for e in t.eval_prompts]
    a, b = t.gold[0].prompt[:-1].split("+")
    assert t.gold[0].answer == str(int(a) + int(b))[::-1]


def test_verifiers():
    ex = Example("1+1=", "2")
    assert exact(ex, " 2 ") and not exact(ex, "3")
    assert numeric(Example("p", "2.0"), "2") and not numeric(Example("p", "2"), "two")
    assert verifier("itertrain.tasks:exact") is exact
    with pytest.raises(TaskError, match="cannot import"):
        verifier("nosuch.module:fn")
    with pytest.raises(TaskError, match="use package.module:name"):
        verifier("justaname")


def test_select_dedupes_caps_and_counts():
    prompts = [Example("a", "1"), Example("b", "2"), Example("c", "3")]
    outs = [["1", "1", "x", "1"], ["2", "9", "2", "2"], ["x", "y", "z", "w"]]
    kept, verdicts, stats = select(prompts, outs, exact, max_per_prompt=1)
    assert kept == [Example("a", "1"), Example("b", "2")]
    assert verdicts[0] == [True, True, False, True]
    assert stats == {"num_generated": 12, "num_kept": 2, "acceptance_rate": 2 / 12, "pass_at_k": 2 / 3}
    kept, _, _ = select([Example("a", "1")], [["1", " 1", "1 "]], exact, max_per_prompt=5)
    assert kept == [Example("a", "1"), Example("a", " 1"), Example("a", "1 ")]  # distinct texts


def test_a_verifier_that_raises_is_named():
    def bad(example, completion):
        raise KeyError("boom")

    with pytest.raises(TaskError, match=r"--verifier my:bad raised KeyError: 'boom' on prompt 0 \(sample 0: 'a'\)"):
        select([Example("a", "1")], [["1"]], bad, 1, "--verifier my:bad")


def test_training_set_order_reuse_and_gold():
    gold = [Example("g", "0")]
    kept = {0: [Example("a", "1")], 1: [Example("b", "2"), Example("a", "1")]}
    assert training_set(1, kept, gold, reuse_previous=True, gold_iterations=-1) == [
        Example("g", "0"), Example("a", "1"), Example("b", "2")]
    assert training_set(1, kept, gold, reuse_previous=False, gold_iterations=1) == [
        Example("b", "2"), Example("a", "1")]
    assert training_set(0, kept, gold, reuse_previous=True, gold_iterations=1)[0] == Example("g", "0")


def test_jsonl_errors_name_file_and_line(tmp_path):
    f = write(tmp_path / "t.jsonl", [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2="}])
    with pytest.raises(TaskError, match=r"t.jsonl:2: needs a non-empty string field \"answer\""):
        read_data(f)
    f = write(tmp_path / "u.jsonl", [{"prompt": "1+1=", "answer": "2"}, "{oops"])
    with pytest.raises(TaskError, match=r"u.jsonl:2: not JSON"):
        read_data(f)
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(TaskError, match=r"e.jsonl: no examples \(empty file\)"):
        read_data(str(tmp_path / "e.jsonl"))
    with pytest.raises(TaskError, match="cannot read"):
        read_data(str(tmp_path / "missing.jsonl"))
    with pytest.raises(TaskError, match="go together"):
        load_task(args(train_prompts=f), 0)


def test_jsonl_task_and_sft_data(tmp_path):
    tr = write(tmp_path / "tr.jsonl", [{"prompt": "1+1=", "answer": "2"}])
    ev = write(tmp_path / "ev.jsonl", [{"prompt": "2+2=", "answer": "4"}])
    t = load_task(args(train_prompts=tr, eval_prompts=ev, sft_data=tr, verifier="numeric"), 0)
    assert t.train_prompts == [Example("1+1=", "2")] and t.gold == t.train_prompts and t.verify is numeric


def test_task_plugin(tmp_path, monkeypatch):
    (tmp_path / "myplug.py").write_text(textwrap.dedent("""
        from itertrain.tasks import Example, Task, exact
        def make():
            return Task([Example("1+2=", "3")], [Example("2+2=", "4")], exact, name="mine")
        def broken():
            raise RuntimeError("no data")
        def wrong():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_task(args(task="myplug:make"), 0).name == "mine"
    with pytest.raises(TaskError, match="--task myplug:broken: raised RuntimeError: no data"):
        load_task(args(task="myplug:broken"), 0)
    with pytest.raises(TaskError, match="returned int, not itertrain.tasks.Task"):
        load_task(args(task="myplug:wrong"), 0)
    sys.modules.pop("myplug", None)


def test_task_with_nothing_to_train_on():
    with pytest.raises(TaskError, match="no training prompts and no gold"):
        load_task(args(num_gold=0, num_prompts=0), 0)


def test_a_hub_name_is_refused_with_how_to_save_it_locally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TaskError) as e:
        files.read("openai/gsm8k")
    assert str(e.value).startswith("openai/gsm8k: no such file or directory, and hub names are not read")
    assert "datasets.load_dataset('openai/gsm8k', split='train').to_json('train.jsonl')" in str(e.value)
    with pytest.raises(TaskError, match=r"^missing.jsonl: cannot read \(No such file"):
        files.read("missing.jsonl")
