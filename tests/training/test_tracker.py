"""A non-default tracker for real: a run with --tracker mlflow logs the same scalars as TensorBoard, plus
per-layer gradient norms, into a local MLflow store (nothing leaves the machine)."""

from __future__ import annotations

import pytest

from tests.conftest import tiny_run_config
from wavedistill.errors import WavedistillError

mlflow = pytest.importorskip("mlflow", reason="the dev extra installs mlflow-skinny; pip install -e '.[dev]'")


def test_an_mlflow_run_logs_the_training_scalars_and_per_layer_gradient_norms(tiny_teacher, tmp_path):
    from wavedistill.training.distill import run

    import os

    out = tmp_path / "run"
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE")}
    try:  # unset: the run chooses a local store in its own folder
        run(tiny_run_config(tiny_teacher, out, max_steps=4, tracker="mlflow", grad_norm_every=2))
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    client = mlflow.tracking.MlflowClient(tracking_uri="file://" + str(out / "mlruns"))
    (experiment,) = [e for e in client.search_experiments() if e.name == "run"]
    (logged,) = client.search_runs([experiment.experiment_id])
    metrics = logged.data.metrics
    assert {"train/loss", "train/kl", "val/kl", "val/top5_overlap", "grad_norm/layer_0", "grad_norm/layer_1"} <= set(
        metrics)
    steps = [m.step for m in client.get_metric_history(logged.info.run_id, "train/loss")]
    assert steps == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "grad_norm/layer_0")] == [2, 4]
    assert logged.data.params["tracker"] == "mlflow" and logged.data.params["max_steps"] == "4"
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir()), "TensorBoard is still written"


def test_an_unknown_tracker_is_refused(tiny_teacher, tmp_path):
    with pytest.raises(WavedistillError, match="tracker must be one of tensorboard, wandb, aim, mlflow"):
        tiny_run_config(tiny_teacher, tmp_path / "run", tracker="comet")
