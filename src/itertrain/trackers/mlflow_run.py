"""MLflow (--report_to mlflow): one MLflow run per experiment, resumed by its id.

Metrics on the experiment's global-step axis (train/loss and train/learning_rate per optimizer step,
iteration/* at the iteration's last step), the settings as the run's parameters when the run is
made. MLflow keeps every value logged, so at start the tracker asks the run for the last step of
each metric and skips every value up to it: nothing is logged twice after a crash. The store is
MLFLOW_TRACKING_URI when set, else the one the run was made in (kept in trackers.json), else
MLflow's default; the experiment is MLFLOW_EXPERIMENT_NAME when set, else MLflow's Default.
"""

from __future__ import annotations

import os
import secrets
import time

from itertrain.core.errors import TrackerError
from itertrain.trackers.values import each_step, iteration_values, replay, step_values

BATCH = 1000  # MLflow's limit of metrics per log_batch call (100 for parameters)


def _uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", "")


def problems() -> list[str]:
    """A file store that MLflow itself would refuse (decided MLflow's own way), before anything runs."""
    from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    from mlflow.utils.uri import get_uri_scheme, is_databricks_uri

    uri = _uri()
    file_store = uri and get_uri_scheme(uri) in ("", "file") and not is_databricks_uri(uri)
    if file_store and not MLFLOW_ALLOW_FILE_STORE.get():
        return [f"MLFLOW_TRACKING_URI={uri} is a file store, which MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE=true "
                "is set too; or use a database store (sqlite:///path/mlflow.db) or a server"]
    return []


class Tracker:
    def __init__(self, output_dir: str, prior: dict | None, settings: dict, name: str):
        self.settings, self.name = settings, name
        self.output_dir = os.path.abspath(output_dir)
        # A key of our own, on disk before the run is made: a start killed between making the run and
        # recording its id finds that run again by its tag instead of making a second one.
        self.record = dict(prior) if prior else {"key": secrets.token_hex(8)}
        self.resumed = False
        self.done: dict[str, int] = {}  # per metric, the last step the run holds

    def start(self) -> None:
        import mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        uri = _uri() or self.record.get("tracking_uri") or mlflow.get_tracking_uri()
        self.client = MlflowClient(tracking_uri=uri)
        try:
            run = self._find_or_create()
            run_id = run.info.run_id
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            self._log_params(run_id, run.data.params)
            self.done = {k: max((m.step for m in self.client.get_metric_history(run_id, k)), default=0)
                         for k in run.data.metrics}
        except MlflowException as e:
            what = f"run {self.record['id']} (recorded in trackers.json)" if "id" in self.record else "the run"
            raise TrackerError(f"MLflow at {uri}: {what}: {e.message.splitlines()[0]}") from None
        self.record = {**self.record, "id": run_id, "tracking_uri": uri}

    def _find_or_create(self):
        if "id" in self.record:
            self.resumed = True
            return self.client.get_run(self.record["id"])
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
        experiment = "0"
        if name:
            found = self.client.get_experiment_by_name(name)
            experiment = found.experiment_id if found else self.client.create_experiment(name)
        tag = f"tags.`itertrain.key` = '{self.record['key']}'"
        if found := self.client.search_runs([experiment], filter_string=tag, max_results=1):
            self.resumed = True
            return found[0]
        return self.client.create_run(experiment, run_name=self.name,
                                      tags={"itertrain.key": self.record["key"], "itertrain.output_dir": self.output_dir})

    def _log_params(self, run_id: str, held: dict) -> None:
        """The settings, once: a start that finds some already logged adds only the rest."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        params = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in sorted(self.settings.items()) if k not in held]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=params[i:i + MAX_PARAMS_TAGS_PER_BATCH])

    def describe(self) -> str:
        last = max(self.done.values(), default=0)
        held = f"resumed, it holds steps up to {last}" if self.resumed else "new"
        return f"📈 mlflow: run {self.record['id']} at {self.record['tracking_uri']} ({held})"

    def catch_up(self, history: list) -> None:
        replay(self, history)

    def _log(self, points: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for step, values in points for k, v in values.items()
                   if step > self.done.get(k, 0)]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.record["id"], metrics=metrics[i:i + BATCH])
        for m in metrics:
            self.done[m.key] = max(self.done.get(m.key, 0), m.step)

    def steps(self, first_step: int, losses: list[float], lrs: list[float], extra: dict | None = None) -> None:
        self._log([(first_step + i, step_values(loss, lr, own)) for i, loss, lr, own in each_step(losses, lrs, extra)])

    def iteration(self, metrics: dict) -> None:
        self._log([(metrics["global_step"], iteration_values(metrics))])

    def final_model(self, path: str, metrics: dict) -> None:
        """The path, as a tag and a small final_model.json artifact: the model itself is not copied."""
        self.client.set_tag(self.record["id"], "itertrain.final_model", path)
        self.client.log_dict(self.record["id"], {"path": path, "iteration": metrics.get("iteration"),
                                                 "global_step": metrics.get("global_step")}, "final_model.json")

    def close(self, outcome: str) -> None:
        self.client.set_terminated(self.record["id"], {"finished": "FINISHED", "stopped": "KILLED"}.get(outcome, "FAILED"))
