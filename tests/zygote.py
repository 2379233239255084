"""A process that imports itertrain's CLI once and forks a child for each run (conftest.run_cli).

Importing torch, transformers and accelerate is about 4 of the 5 seconds of a test run; a forked
child starts with them imported and is otherwise a fresh process: its own environment, working
directory, stdout and stderr files, and exit status (os._exit of a failpoint, or a signal, as with
subprocess). Nothing has run in this process but imports, so no thread or process group exists
to be copied into a child.

Protocol, one JSON object a line: the parent writes {"argv", "env", "cwd", "out", "err"}; this
process answers {"pid"} when the child exists and {"rc"} when it has ended.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

import peft  # noqa: E402,F401  (--use_peft runs)
import transformers  # noqa: E402,F401
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments  # noqa: E402,F401

from itertrain.app import cli, config, loop, startup, status  # noqa: E402,F401
from itertrain.phases import samples  # noqa: E402,F401
from itertrain.training import trainer  # noqa: E402,F401


def child(req: dict) -> None:
    code = 1
    try:
        os.setsid()
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        for p in reversed([p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]):
            sys.path.insert(0, p)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, req["out"]), (2, req["err"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        sys.argv = [os.path.join(REPO, "train_iterative.py"), *req["argv"]]
        # The child is train_iterative.py's process, to the processes it spawns too: multiprocessing's
        # spawn runs the main module again in each (the verifier pool), and this one imports everything.
        main = types.ModuleType("__main__")
        main.__file__, main.__spec__ = sys.argv[0], None
        sys.modules["__main__"] = main
        code = cli.train_command(req["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback, exit 1
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            child(req)
        print(json.dumps({"pid": pid}), flush=True)
        _, status_ = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status_)}), flush=True)


if __name__ == "__main__":
    main()
