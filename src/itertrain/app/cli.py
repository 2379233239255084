"""Entry points: `itertrain train|status|plot`, `python -m itertrain`, and train_iterative.py.

Thin: parse, build, run. Bad input is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import gc
import os
import sys

USAGE = "usage: itertrain {train,status,plot} ...   (itertrain COMMAND --help)"
COMMANDS = """commands:
  train   run or resume an experiment (the default: `itertrain --output_dir D` is `itertrain train --output_dir D`)
  status  where an experiment stands, and the command that resumes it
  plot    the loss curve and per-iteration accuracy as a PNG"""


def main(argv: list[str] | None = None, prog: str = "itertrain") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(f"{USAGE.replace('itertrain', prog)}\n\n{COMMANDS}\n\nThe flags of {prog} train:\n", flush=True)
        return train_command(argv, prog=f"{prog} train")
    if argv and argv[0] == "status":
        from itertrain.app.status import main as status_main

        return status_main(argv[1:])
    if argv and argv[0] == "plot":
        from itertrain.app.plot import main as plot_main

        return plot_main(argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    elif argv and not argv[0].startswith("-") and not argv[0].endswith((".yaml", ".yml", ".json")):
        print(f"itertrain: error: unknown command {argv[0]!r}\n{USAGE.replace('itertrain', prog)}", file=sys.stderr)
        return 2
    return train_command(argv, prog=f"{prog} train")


def console(prog: str = "itertrain") -> int:
    """The `itertrain` console script (and `python -m itertrain`): main, then leave (below)."""
    return leave(main(prog=prog))


def leave(code: int) -> int:
    """End the process now, once everything is committed, every tracker closed and the output flushed,
    without the interpreter's teardown (freeing the imports' objects one by one: BENCHMARKS.md). Only
    where the output cannot be flushed (a closed pipe) is `code` returned for the usual exit."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        return code
    os._exit(code)


def train_command(argv: list[str], prog: str | None = None) -> int:
    """`itertrain train`: parse the flags, run the experiment, turn each kind of failure into its exit code."""
    from itertrain.runtime import stop

    stop.early()  # before the imports below (seconds): a stop request then is acted on at the first safe point
    gc.disable()  # until startup.freeze_imports, which freezes what the imports below leave
    try:
        return _train(argv, prog)
    finally:
        gc.unfreeze()  # (in-process callers: what this run made is collectable again)
        gc.enable()


def _train(argv: list[str], prog: str | None) -> int:
    from itertrain.app.config import parse
    from itertrain.core.errors import ItertrainError
    from itertrain.runtime import stop

    try:
        try:
            cfg = parse(argv, prog)
        except BaseException:
            stop.drop_early()
            raise
        handlers = stop.install(cfg.it.stop_signals, cfg.it.stop_after)
        from itertrain.app import mirroring, startup
        from itertrain.runtime import dist

        several = False
        try:
            try:
                code = startup.run_experiment(cfg)
                if dist.is_main() and mirroring.settle(None) is False:
                    print("itertrain: stopped while the last uploads to the mirror waited: every artifact is "
                          "committed here; a resume uploads the rest", flush=True)
                    code = stop.EXIT_STOPPED
            except stop.Stopped as e:
                if dist.is_main():
                    if (mirrored := mirroring.settle(cfg.mirror.mirror_grace)) is not None:
                        e.record.update(mirror=cfg.mirror.mirror_to, mirrored=mirrored)
                    stop.record(cfg.output_dir, e)
                    mirroring.settle(min(cfg.mirror.mirror_grace, 10.0))  # the record itself
                    from itertrain.app import settings

                    command = settings.resume_command(cfg.output_dir, settings.saved(cfg.output_dir))
                    print(f"itertrain: {e}. Resume with: {command}", flush=True)
                code = stop.EXIT_STOPPED
            finally:
                mirroring.close(cfg.mirror.mirror_grace)
            several = dist.world_size() > 1
            dist.finish()
        finally:
            # Several ranks keep the handlers until they exit: once one rank has exited, torchrun sends
            # SIGTERM to the others, and a rank still leaving the process group must not die of it.
            if not several:
                stop.uninstall(handlers)
        if several:  # (in-process callers, tests and tools, are single processes)
            # Every artifact is committed (fsynced) and every rank has left the process group
            # together. What remains is interpreter teardown, where a rank can still abort in C++
            # destructors ("terminate called without an active exception", seen under DeepSpeed
            # ZeRO-3 on CPU after a finished run), and torchrun then fails the whole run. Leave now,
            # before the collector is given back (train_command's finally).
            return leave(code)
        return code
    except ItertrainError as e:
        _error(e)
        return e.exit_code
    except OSError as e:
        if e.errno is None:
            raise
        # The machine said no (full disk, permissions, read-only file system): nothing half-written
        # is ever visible, so the honest message is what failed and that a resume picks up from here.
        _error(f"{e.strerror} ({e.filename}): the run stopped; every artifact committed before this is "
               "intact. Fix the cause, then resume with --resume_from auto --resume_from_iteration auto")
        return 1


def _error(e: Exception) -> None:
    from itertrain.runtime import dist

    if dist.is_main():
        print(f"itertrain: error: {e}", file=sys.stderr, flush=True)
