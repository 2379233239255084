"""Weights & Biases (--report_to wandb): one W&B run per experiment, resumed by its id.

W&B's step is the experiment's global step: one history row per optimizer step (train/loss,
train/learning_rate), the iteration's metrics (iteration/*) in the row of its last step, the
settings as the run's config when the run is made. W&B refuses a step below one it holds, so steps
already logged are skipped, never overwritten: at start the tracker finds the last step the run
holds (online: W&B's own step counter of the resumed run; offline, where that counter restarts at
0: the run's local transaction logs, read back) and drops every row up to it. The newest row is held
back until a later step or the iteration's metrics arrive, so that a row is only written whole;
a row held back at a stop or crash is caught up from the committed curve at the next start.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import struct
import zlib

from itertrain.trackers.values import each_step, iteration_values, replay, step_values

BLOCK, HEADER = 32768, 7  # W&B's transaction log: LevelDB's log format after a 7-byte ":W&B" header


def records(path: str):
    """The protobuf records of one `run-<id>.wandb` file, up to the first torn or damaged one."""
    from wandb.proto import wandb_internal_pb2 as pb

    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b":W&B":
        return
    i, parts = HEADER, b""
    while True:
        if BLOCK - i % BLOCK < 7:  # a block's tail too short for a record header is padding
            i += BLOCK - i % BLOCK
        if i + 7 > len(data):
            return
        crc, n, kind = struct.unpack("<IHB", data[i:i + 7])
        body = data[i + 7:i + 7 + n]
        if kind == 0 or len(body) < n or zlib.crc32(body, zlib.crc32(bytes([kind]))) != crc:
            return
        i += 7 + n
        if kind in (1, 2):  # full, first
            parts = b""
        parts += body
        if kind in (1, 4):  # full, last
            yield pb.Record.FromString(parts)


def local_log(wandb_dir: str, run_id: str) -> tuple[list[dict], set[str]]:
    """What W&B wrote locally for `run_id` over every start, oldest first: the history rows
    ({key: value, "_step": n}) and the config keys set (W&B's own, "_wandb", left out)."""
    def started(path: str) -> tuple[str, str]:  # offline-run-<yyyymmdd_hhmmss>-<id>[-n]
        name = os.path.basename(os.path.dirname(path))
        return (m.group(1) if (m := re.search(r"-(\d{8}_\d{6})-", name)) else "", name)

    rows, config = [], set()
    for path in sorted(glob.glob(os.path.join(wandb_dir, f"*-{run_id}*", f"run-{run_id}.wandb")), key=started):
        for r in records(path):
            kind = r.WhichOneof("record_type")
            if kind == "history":
                rows.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                             for item in r.history.item})
            elif kind in ("run", "config"):
                items = r.run.config.update if kind == "run" else r.config.update
                config |= {item.key for item in items if not item.key.startswith("_")}
    return rows, config


class Tracker:
    def __init__(self, output_dir: str, prior: dict | None, settings: dict, name: str):
        self.new = prior is None
        self.record = dict(prior) if prior else {"id": os.environ.get("WANDB_RUN_ID") or secrets.token_hex(6),
                                                 "project": os.environ.get("WANDB_PROJECT", "itertrain")}
        self.output_dir, self.settings, self.name = output_dir, settings, name
        self.run = None
        self.done = 0  # the last step the run holds
        self.pending: tuple[int, dict] | None = None

    def start(self) -> None:
        import wandb

        self.run = wandb.init(project=self.record["project"], id=self.record["id"], resume="allow", name=self.name,
                              dir=os.environ.get("WANDB_DIR") or self.output_dir)
        if self.run.settings.mode == "offline":
            wandb_dir = os.path.dirname(os.path.dirname(self.run.dir))  # <dir>/wandb/<this start>/files
            rows, config = local_log(wandb_dir, self.record["id"])
            self.done = max((row.get("_step", 0) for row in rows), default=0)
        else:
            self.done = max(self.run.step - 1, 0) if self.run.resumed else 0
            config = {k for k in self.run.config.keys() if not k.startswith("_")}
        if not config:  # once: at the first start that reaches the run (a kill may have lost an earlier one)
            self.run.config.update(self.settings)

    def describe(self) -> str:
        mode = "offline" if self.run.settings.mode == "offline" else "online"
        held = f"resumed, it holds steps up to {self.done}" if self.done else ("new" if self.new else "resumed")
        return f"📈 wandb: run {self.record['id']} in project {self.record['project']} ({mode}; {held})"

    def catch_up(self, history_: list) -> None:
        replay(self, history_)

    def _emit(self) -> None:
        step, values = self.pending
        self.pending = None
        self.run.log(values, step=step)
        self.done = step

    def steps(self, first_step: int, losses: list[float], lrs: list[float], extra: dict | None = None) -> None:
        for i, loss, lr, own in each_step(losses, lrs, extra):
            step = first_step + i
            if step <= self.done:
                continue
            if self.pending is not None:
                self._emit()
            self.pending = (step, step_values(loss, lr, own))

    def iteration(self, metrics: dict) -> None:
        step = metrics["global_step"]
        if step <= self.done:
            return
        values = iteration_values(metrics)
        if self.pending is not None and self.pending[0] == step:
            values = {**self.pending[1], **values}
        elif self.pending is not None:
            self._emit()
        self.pending = (step, values)
        self._emit()

    def final_model(self, path: str, metrics: dict) -> None:
        """A reference artifact: W&B records the path, nothing is uploaded or copied."""
        import wandb

        artifact = wandb.Artifact(f"model-{self.record['id']}", type="model",
                                  metadata={"path": path, **{k: metrics.get(k) for k in ("iteration", "global_step")}})
        artifact.add_reference(f"file://{path}", checksum=False)
        self.run.log_artifact(artifact)

    def close(self, outcome: str) -> None:
        if outcome == "finished" and self.pending is not None:
            self._emit()
        if outcome == "stopped":
            self.run.mark_preempting()  # W&B shows it as preempted, to be resumed
        self.run.finish(exit_code=0 if outcome == "finished" else 1)
