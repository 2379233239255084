"""Real tasks as users bring them: data in the formats `datasets` reads, prompts as chat messages
through the tokenizer's chat template, and the GSM8K example (examples/gsm8k) run end to end."""

import json

import pytest
from chaos_harness import EXAMPLE, example_flags
from conftest import killed_by, max_diff, run_cli, run_once, shared

from itertrain.app import cli
from itertrain.app.config import IterArguments
from itertrain.tasks import Example, TaskError, chat, load_task, read_data, tinymodel

TRAIN, EVAL = EXAMPLE / "train.jsonl", EXAMPLE / "eval.jsonl"
FIELDS = IterArguments(prompt_field="question")


def rows():
    return [json.loads(line) for line in TRAIN.read_text().splitlines()]


def test_every_format_datasets_reads_gives_the_jsonl_examples(tmp_path):
    import datasets

    want = read_data(str(TRAIN), FIELDS)
    assert len(want) == 32 and want[0].answer.endswith("#### 47")
    data = datasets.Dataset.from_list(rows())
    data.to_parquet(str(tmp_path / "t.parquet"))
    data.to_csv(str(tmp_path / "t.csv"), index=False)
    (tmp_path / "t.json").write_text(json.dumps(rows()))
    data.save_to_disk(str(tmp_path / "saved"))
    for name in ("t.parquet", "t.csv", "t.json", "saved"):
        assert read_data(str(tmp_path / name), FIELDS) == want, name
    renamed = datasets.Dataset.from_list([{"q": r["question"], "a": r["answer"]} for r in rows()])
    renamed.to_parquet(str(tmp_path / "r.parquet"))
    assert read_data(str(tmp_path / "r.parquet"), IterArguments(prompt_field="q", answer_field="a")) == want


def test_bad_data_is_one_line_naming_the_file_and_row(tmp_path):
    import datasets

    datasets.Dataset.from_list([{"question": "q1", "answer": "1"}, {"question": "", "answer": "2"}]).to_parquet(
        str(tmp_path / "b.parquet"))
    with pytest.raises(TaskError, match=r"b.parquet: row 2: needs a non-empty string field \"question\""):
        read_data(str(tmp_path / "b.parquet"), FIELDS)
    with pytest.raises(TaskError, match=r"train.jsonl:1: needs a non-empty string field \"prompt\""):
        read_data(str(TRAIN))  # the example's column is "question"
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(TaskError, match=r"t.txt: not a .jsonl, .json, .csv or .parquet file"):
        read_data(str(tmp_path / "t.txt"))
    (tmp_path / "m.jsonl").write_text(json.dumps({"prompt": [{"role": "user"}], "answer": "1"}) + "\n")
    with pytest.raises(TaskError, match=r"m.jsonl:1: \"prompt\" is a list, but not of chat messages"):
        read_data(str(tmp_path / "m.jsonl"))
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows()), "test": datasets.Dataset.from_list(rows())})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(TaskError, match=r"dd: a DatasetDict with splits train, test: give one split's directory"):
        read_data(str(tmp_path / "dd"), FIELDS)


@pytest.fixture(scope="module")
def instruct(tmp_path_factory):
    d = tmp_path_factory.mktemp("instruct") / "model"
    tinymodel.write_chat_model(str(d), 0)
    from transformers import AutoTokenizer

    return d, AutoTokenizer.from_pretrained(d)


def test_chat_template_formats_string_and_message_prompts(instruct):
    _, tok = instruct
    it = IterArguments(train_prompts=str(TRAIN), eval_prompts=str(EVAL), sft_data=str(TRAIN), prompt_field="question",
                       verifier="gsm8k")
    task = load_task(it, 0, tokenizer=tok)
    first = rows()[0]["question"]
    assert task.train_prompts[0].prompt == f"<|im_start|>user\n{first}<|im_end|>\n<|im_start|>assistant\n"
    assert task.gold[0].prompt == task.train_prompts[0].prompt  # trained on the same text it generates from
    assert task.eval_prompts[0].prompt.startswith("<|im_start|>system\nSolve the problem. End with #### and the "
                                                  "number.<|im_end|>\n<|im_start|>user\n")
    assert task.eval_prompts[0].prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    plain = load_task(IterArguments(train_prompts=str(TRAIN), eval_prompts=str(TRAIN), prompt_field="question",
                                    chat_template="none"), 0, tokenizer=tok)
    assert plain.train_prompts[0] == Example(first, rows()[0]["answer"])


def test_chat_messages_need_a_template(instruct):
    _, tok = instruct
    for tokenizer, mode, why in ((tok, "none", "--chat_template none"), (None, "auto", "the tokenizer has no chat template")):
        with pytest.raises(TaskError, match=f"eval.jsonl: its prompts are chat messages, but {why}"):
            load_task(IterArguments(train_prompts=str(TRAIN), eval_prompts=str(EVAL), prompt_field="question",
                                    chat_template=mode), 0, tokenizer=tokenizer)
    assert chat.applies(tok, "auto") and not chat.applies(tok, "none")


def test_the_cli_refuses_bad_task_input_before_writing(tmp_path, capsys, instruct):
    model, _ = instruct
    out = tmp_path / "exp"
    for argv, needle in (
            (["--train_prompts", str(TRAIN), "--eval_prompts", str(EVAL), "--prompt_field", "question"],
             "eval.jsonl: its prompts are chat messages, but the tokenizer has no chat template"),
            (["--model_name", str(model), "--train_prompts", str(TRAIN), "--eval_prompts", str(EVAL),
              "--prompt_field", "question", "--verifier", "regex:("], "--verifier regex:(: not a regular expression"),
            (["--model_name", str(model), "--train_prompts", str(TRAIN), "--eval_prompts", str(EVAL),
              "--verifier_timeout", "0"], "--verifier_timeout > 0")):
        assert cli.main(["--output_dir", str(out), *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert not out.exists()


def test_a_task_verifier_the_pool_cannot_import_is_one_line_before_writing(tmp_path, capsys):
    out = tmp_path / "exp"
    assert cli.main(["--output_dir", str(out), "--task", "plugins:closure_task"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("itertrain: error: the task's verifier cannot run in the verifier pool (AttributeError: ")
    assert line.endswith("define it at module level, or pass --verifier_workers 0 (no timeout)")
    assert not out.exists()


@pytest.fixture(scope="session")
def example_ref(tmp_path_factory):
    model = shared(tmp_path_factory, "instruct_model", lambda w: (tinymodel.write_chat_model(str(w / "m"), 0), w / "m")[1])
    flags = example_flags(model)
    return flags, shared(tmp_path_factory, "example_ref", run_once(*flags))[0]


@pytest.mark.e2e
def test_the_example_killed_or_stopped_anywhere_resumes_bit_identically(tmp_path, example_ref):
    flags, ref = example_ref
    rows_ = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows_] == [0, 1]
    assert all(r["verifier_timeouts"] == 0 and r["verifier_errors"] == 0 for r in rows_)
    gen = [json.loads(line) for line in (ref / "samples_0" / "generated.jsonl").read_text().splitlines()]
    assert gen[0]["prompt"].startswith("<|im_start|>user\n") and len(gen) == 32 * 2
    # killed in training, and while a verified shard commits; stopped (SIGTERM) while the pool verifies
    for failpoint, code in (("train.step=8", 137), ("shard.write=16", 137), ("signal.verify=20", 75)):
        out = tmp_path / failpoint.split("=")[0]
        assert run_cli(out, *flags, failpoints=failpoint).returncode == code
        proc = run_cli(out, *flags, "--resume_from", "auto", "--resume_from_iteration", "auto")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert max_diff(out / "iter_1", ref / "iter_1") == 0.0
        assert (out / "metrics.jsonl").read_text() == (ref / "metrics.jsonl").read_text()


@pytest.mark.e2e
def test_a_hanging_and_raising_plugin_is_counted_and_the_resume_is_identical(tmp_path, example_ref):
    flags, _ = example_ref
    flaky = [*flags, "--verifier", "plugins:flaky", "--verifier_timeout", "2", "--num_iterations", "1"]
    whole = tmp_path / "whole"
    proc = run_cli(whole, *flaky)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert row["verifier_timeouts"] > 0 and row["verifier_errors"] > 0, row
    assert proc.stdout.count("counted as rejected") == 1  # logged once, then counted
    from itertrain.app import status

    (shown,) = status.build(status._parser().parse_args([str(whole)]))["iterations"]
    assert (shown["verifier_timeouts"], shown["verifier_errors"]) == (row["verifier_timeouts"], row["verifier_errors"])
    cut = tmp_path / "cut"  # killed while a shard verified by the pool commits, then resumed
    killed_by(run_cli(cut, *flaky, failpoints="shard.write=16"), "shard.write=16")
    proc = run_cli(cut, *flaky, "--resume_from", "auto", "--resume_from_iteration", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (cut / "metrics.jsonl").read_text() == (whole / "metrics.jsonl").read_text()
    assert max_diff(cut / "iter_0", whole / "iter_0") == 0.0


@pytest.mark.e2e
def test_samples_of_other_prompts_are_not_reused(tmp_path, example_ref):
    """The same data with another chat template is other prompts: committed samples made from the
    templated ones are set aside (kept) and made again from the plain ones."""
    flags, _ = example_ref
    plain_eval = [*flags, "--eval_prompts", str(TRAIN)]  # string prompts: the template may be turned off
    out = tmp_path / "exp"
    killed_by(run_cli(out, *plain_eval, failpoints="train.step=2"), "train.step=2")  # samples_0 committed
    proc = run_cli(out, *plain_eval, "--chat_template", "none", "--resume_from", "auto",
                   "--resume_from_iteration", "auto", "--change_experiment", "true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (aside,) = out.glob("samples_0.superseded-*")
    first = json.loads((aside / "generated.jsonl").read_text().splitlines()[0])["prompt"]
    again = json.loads((out / "samples_0" / "generated.jsonl").read_text().splitlines()[0])["prompt"]
    assert first.startswith("<|im_start|>user\n") and again == rows()[0]["question"]
