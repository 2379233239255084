"""A rank that torchrun starts, run by the test zygote (tests/zygote.py) instead of a fresh interpreter.

torchrun runs this script as it runs train_iterative.py, with the same arguments. It hands them to
the zygote with its environment, working directory and stdin/stdout/stderr; the zygote forks the rank
from a process that has imported everything once. Signals that this process receives go to the rank's
process group (torchrun's SIGTERM to its workers); its exit status, or the signal that ended it, is the
rank's. If this process is killed, the zygote kills the rank. Imports nothing heavy: it starts in
milliseconds.
"""

import json
import os
import signal
import socket
import sys


def main() -> None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(os.environ["ITERTRAIN_ZYGOTE_SOCKET"])
    request = {"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(), "out": None, "err": None}
    socket.send_fds(conn, [(json.dumps(request) + "\n").encode()], [0, 1, 2])
    replies = conn.makefile("r")
    pid = json.loads(replies.readline())["pid"]

    def forward(sig, _frame):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    line = replies.readline()
    rc = json.loads(line)["rc"] if line else 1
    if rc < 0:  # ended by a signal: so is this process, as torchrun must see it
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    sys.exit(rc)


if __name__ == "__main__":
    main()
