"""The docs' commands run as printed: every ```bash block of the pages below, in order, in a directory of
its own, as a user with the checkout's .venv active would run them.

The runs are small through ITERTRAIN_DEFAULTS=docs/small.yaml, as the quick start tells a reader who
wants to try the commands in seconds; flags a command gives still win. A block may be prepared by
comments a reader does not see, right above it:

    <!-- docs-test before: SHELL -->   run first (the state the prose describes, such as a crashed copy)
    <!-- docs-test env: NAME=VALUE -->  in the block's environment (a failpoint, to crash a run on purpose)
    <!-- docs-test exit: N -->          the status the block must end with (default 0)
    <!-- docs-test after: SHELL -->    run after it
    <!-- docs-test skip: WHY -->       not run (only for what this machine has not: a Slurm scheduler)
    <!-- docs-test s3: BUCKET -->      a real S3 server on loopback (tests/s3_server.py) holds BUCKET, and
                                       the block's environment reaches it as a reader's would reach
                                       theirs (AWS_ENDPOINT_URL_S3 and credentials, which botocore reads)

`make test` is run as `make -n test`: the suite cannot run itself (CI runs it as written).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO

PAGES = ["README.md", "docs/quickstart.md", "docs/scenarios.md", "docs/clusters.md", "docs/status.md",
         "docs/batches.md"]
LINKED = ["train_iterative.py", "Makefile", "pyproject.toml", "constraints.txt", "src", "examples", "docs", ".venv"]
SKIPPABLE = ("Slurm",)


@dataclass
class Block:
    line: int
    text: str
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    exit: int = 0
    skip: str | None = None
    s3: str | None = None


def blocks(page: str) -> list[Block]:
    """The page's ```bash blocks with their directives; every fence must name its language."""
    out, pending, fence, start, body = [], Block(0, ""), None, 0, []
    for n, line in enumerate((REPO / page).read_text(encoding="utf-8").splitlines(), 1):
        if fence is not None:
            if line == "```":
                if fence.startswith("bash"):
                    out.append(Block(**{**pending.__dict__, "line": start, "text": "\n".join(body)}))
                    pending = Block(0, "")
                fence = None
            else:
                body.append(line)
        elif line.startswith("```"):
            fence, start, body = line[3:], n, []
            assert fence, f"{page}:{n}: a code block without a language (bash for commands, text for output)"
        elif m := re.fullmatch(r"<!-- docs-test (\w+): (.*) -->", line):
            key, value = m.groups()
            if key in ("before", "after"):
                getattr(pending, key).append(value)
            elif key == "env":
                name, _, v = value.partition("=")
                pending.env[name] = v
            elif key == "exit":
                pending.exit = int(value)
            elif key == "s3":
                pending.s3 = value
            else:
                assert key == "skip" and value.startswith(SKIPPABLE), f"{page}:{n}: {line}"
                pending.skip = value
    return out


def sandbox(tmp_path: Path) -> dict:
    """The checkout's files the commands name, linked into tmp_path; the environment of an active .venv."""
    for name in LINKED:
        os.symlink(REPO / name, tmp_path / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ITERTRAIN_", "PYTEST_"))}
    env.update(PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}", VIRTUAL_ENV=str(REPO / ".venv"),
               ITERTRAIN_DEFAULTS=str(REPO / "docs" / "small.yaml"))
    return env


def shell(script: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


# e2e, though README and the quick start start torchrun and accelerate launch: their runs are small,
# and beside the multi-process group they take only what it leaves (their worker runs at nice 10,
# conftest.pytest_runtest_setup); in the group they would lengthen the suite's longest path.
@pytest.mark.e2e
@pytest.mark.parametrize("page", PAGES)
def test_every_command_block_runs_as_printed(tmp_path, page):
    env = sandbox(tmp_path)
    found = blocks(page)
    assert found, f"{page}: no bash block"
    server = None
    for b in found:
        if b.skip:
            continue
        where = f"{page}:{b.line}"
        if b.s3:
            if server is None:
                from s3_server import S3Server

                server = S3Server()
                env.update(server.env())
            if b.s3 not in server.buckets():
                server.bucket(b.s3)
        for step in b.before:
            done = shell(step, tmp_path, env)
            assert done.returncode == 0, f"{where}: before: {step}\n{done.stderr[-3000:]}"
        script = re.sub(r"^make test\b", "make -n test", b.text, flags=re.M)
        proc = shell(script, tmp_path, {**env, **b.env})
        assert proc.returncode == b.exit, f"{where}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        assert "Traceback" not in proc.stderr or b.exit, f"{where}\n{proc.stderr[-4000:]}"
        for step in b.after:
            done = shell(step, tmp_path, env)
            assert done.returncode == 0, f"{where}: after: {step}\n{done.stderr[-3000:]}"
    if server is not None:
        server.stop()


def test_the_pages_blocks_are_found_and_only_a_scheduler_is_skipped():
    for page in PAGES:
        for b in blocks(page):
            assert b.text.strip(), f"{page}:{b.line}: an empty block"
            assert b.skip is None or "sbatch" in b.text or "#SBATCH" in b.text, f"{page}:{b.line}"
