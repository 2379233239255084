"""Asynchronous checkpoints (--async_save, on by default): the training loop is blocked only while
the state is copied into memory; the big files are written, fsynced and committed on a thread.

The rules (a checkpoint is visible only once complete, as for a synchronous save):
- The snapshot is taken at the save step, in the training thread: model weights and optimizer
  state are copied into host buffers that are kept from one save to the next (pinned memory on a
  GPU, so the copy is one device-to-host transfer). HF's own code writes the small files (RNG
  states, trainer_state.json) into the staging directory at once, as a synchronous save would.
- At most one save in flight: the next snapshot first waits for the previous write (its buffers are
  about to be reused). The end of training waits too, so an iteration ends only with its last
  checkpoint committed.
- The commit (fsync, manifest last, rename: commit.py) happens only after every rank has written
  its part; ranks agree over a gloo group of their own (dist.side_group), because collectives of the
  training group must stay on the training thread. A crash before the rename leaves the previous
  checkpoint the newest, as in a synchronous save.
- An error in the background (a full disk, one rank failing) is raised in the training thread at
  the next step, save or the end of training: the original exception, with a note saying which
  checkpoint. Its staging directory is never committed (the next start drops it).
The cost: one extra host copy of model and optimizer state while training runs (`--async_save
false` saves synchronously and needs none).
"""

from __future__ import annotations

import threading

import torch


class Buffers:
    """Host copies of a state dict's tensors, reused from one save to the next."""

    def __init__(self):
        self._kept: dict[str, torch.Tensor] = {}

    def copy(self, tree, prefix: str):
        """`tree` (nested dicts/lists/tuples) with every tensor replaced by a host copy. Tensors
        that are views of the same memory (tied weights) stay one tensor in the copy, so HF's
        save_pretrained still sees them as tied."""
        out = self._copy(tree, prefix, {})
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the non_blocking device-to-host copies have landed
        return out

    def _copy(self, x, path: str, seen: dict):
        if isinstance(x, torch.Tensor):
            key = (x.device, x.untyped_storage().data_ptr(), x.storage_offset(), tuple(x.shape), tuple(x.stride()),
                   x.dtype)
            if key not in seen:
                on_gpu = x.device.type == "cuda"
                buf = self._kept.get(path)
                if buf is None or buf.shape != x.shape or buf.dtype != x.dtype:
                    buf = self._kept[path] = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=on_gpu)
                seen[key] = buf.copy_(x.detach(), non_blocking=on_gpu)
            return seen[key]
        if isinstance(x, dict):
            return type(x)((k, self._copy(v, f"{path}/{k}", seen)) for k, v in x.items())
        if isinstance(x, (list, tuple)):
            return type(x)(self._copy(v, f"{path}/{i}", seen) for i, v in enumerate(x))
        return x  # ints, floats, strings: immutable or rebuilt by state_dict() at every call


class Saver:
    """One background write at a time; its error is raised in the caller's thread."""

    def __init__(self):
        self.buffers = Buffers()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._what = ""
        self.stepped = threading.Event()  # set by check() after a submit: training went on

    def submit(self, what: str, work) -> None:
        """Run `work()` on a thread (after waiting for the one in flight)."""
        self.wait()
        self._what = what
        self.stepped.clear()

        def body():
            try:
                work()
            except BaseException as e:  # noqa: BLE001 - handed to the training thread, not swallowed
                self._error = e

        # Not a daemon: if the training thread dies of an exception, the interpreter still waits for
        # the write to commit before the process ends (a kill -9 is what the commit protocol is for).
        self._thread = threading.Thread(target=body, name=f"itertrain-save {what}")
        self._thread.start()

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check(self) -> None:
        """A training step ended: raise a finished write's error now (cheap, so called every step)."""
        self.stepped.set()
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def wait(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join()
        error, self._error = self._error, None
        if error is not None:
            error.add_note(f"(while writing {self._what} in the background: it was not committed)")
            raise error
