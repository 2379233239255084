"""A process that imports itertrain's CLI once and forks a child for each run (conftest.run_cli).

Importing torch, transformers and accelerate is about 4 of the 5 seconds of a test run; a forked
child starts with them imported and is otherwise a fresh process: its own environment, working
directory, stdout and stderr files, and exit status (os._exit of a failpoint, or a signal, as with
subprocess). Nothing has run in this process but imports, so no thread or process group exists
to be copied into a child.

Protocol, one JSON object a line: the parent writes {"argv", "env", "cwd", "out", "err"}; this
process answers {"pid"} when the child exists and {"rc"} when it has ended.

The ranks that torchrun starts come here too, through tests/zygote_rank.py: a rank's process is that
small script, which hands this process its argv, environment (torchrun's RANK, MASTER_PORT...), working
directory and stdin/stdout/stderr over the Unix socket ITERTRAIN_ZYGOTE_SOCKET; the rank is forked from
here, and its exit status goes back to the script, which exits with it. Signals to the script go to the
rank's process group, and a script that dies (torchrun's SIGKILL) takes its rank with it.
"""

from __future__ import annotations

import io
import json
import os
import selectors
import signal
import socket
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

try:
    import deepspeed  # noqa: F401  (a run with deepspeed installed imports it through transformers)
except ImportError:
    pass


def child(req: dict, fds: list[int], keep: list[int]) -> None:
    """The run, in the forked process: `fds` its stdin, stdout and stderr (or none: /dev/null and the
    request's files); `keep` the fds of this process that the child must not hold (the socket's)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        for p in reversed([p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]):
            sys.path.insert(0, p)
        if fds:
            for fd, given in enumerate(fds):
                os.dup2(given, fd)
            # torchrun starts a rank as `python -u`: what it prints before a kill -9 is not lost
            sys.stdout = io.TextIOWrapper(open(1, "wb", 0, closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(open(2, "wb", 0, closefd=False), write_through=True)
        else:
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, path in ((1, req["out"]), (2, req["err"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        for fd in {*keep, *fds} - {0, 1, 2}:
            os.close(fd)
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


class Server:
    """Forks a child per request, from stdin (one at a time) or from the rank socket (several at once),
    and reports each child's end to whoever asked for it."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.owner: dict[int, socket.socket | None] = {}  # a live child's pid: its rank's connection, or None (stdin)
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # so that SIGCHLD writes to the wakeup fd
        signal.set_wakeup_fd(wake_w)
        self.fds = [self.wake_r, wake_w]
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        self.sel.register(0, selectors.EVENT_READ, "stdin")
        self.pending = b""
        path = os.environ.get("ITERTRAIN_ZYGOTE_SOCKET")
        if path:
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(path)
            self.listener.listen(16)
            self.fds.append(self.listener.fileno())
            self.sel.register(self.listener, selectors.EVENT_READ, "listen")

    def fork(self, req: dict, fds: list[int], conn: socket.socket | None) -> int:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            child(req, fds, [*self.fds, *(c.fileno() for c in self.owner.values() if c)] + ([conn.fileno()] if conn else []))
        for fd in fds:
            os.close(fd)
        self.owner[pid] = conn
        return pid

    def reap(self) -> None:
        while self.owner:
            pid, status_ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            if pid not in self.owner:  # (every child is forked here; a stranger's status is no answer)
                continue
            conn, rc = self.owner.pop(pid), os.waitstatus_to_exitcode(status_)
            if conn is None:
                print(json.dumps({"rc": rc}), flush=True)
            else:
                try:
                    conn.sendall((json.dumps({"rc": rc}) + "\n").encode())
                except OSError:
                    pass  # the script is gone already
                if conn in self.sel.get_map():
                    self.sel.unregister(conn)
                conn.close()

    def serve(self) -> None:
        print(json.dumps({"ready": True}), flush=True)
        while True:
            for key, _ in self.sel.select():
                if key.data == "wake":
                    while True:
                        try:
                            os.read(self.wake_r, 512)
                        except BlockingIOError:
                            break
                    self.reap()
                elif key.data == "stdin":
                    data = os.read(0, 1 << 20)
                    if not data:
                        return
                    self.pending += data
                    while b"\n" in self.pending:
                        line, self.pending = self.pending.split(b"\n", 1)
                        print(json.dumps({"pid": self.fork(json.loads(line), [], None)}), flush=True)
                elif key.data == "listen":
                    conn, _ = self.listener.accept()
                    self.sel.register(conn, selectors.EVENT_READ, "rank")
                else:
                    self.rank(key.fileobj)

    def rank(self, conn: socket.socket) -> None:
        """A rank's request (its JSON line and its three fds), or its script's end."""
        pid = next((p for p, c in self.owner.items() if c is conn), None)
        if pid is not None:  # readable again while its rank runs: the script died, the rank goes with it
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.sel.unregister(conn)
            return
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        while not data.endswith(b"\n"):
            more = conn.recv(1 << 20)
            if not more:
                break
            data += more
        if len(fds) != 3 or not data.endswith(b"\n"):
            for fd in fds:
                os.close(fd)
            self.sel.unregister(conn)
            conn.close()
            return
        pid = self.fork(json.loads(data), fds, conn)
        conn.sendall((json.dumps({"pid": pid}) + "\n").encode())


if __name__ == "__main__":
    Server().serve()
