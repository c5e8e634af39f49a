"""The study's registered model in MLflow: a trial's model exported (torch.export, `pt2`),
logged and registered as a version, the `@champion` alias moved to the best, and the
safetensors checkpoints that rebuild a trial's model. Which trial gets there, and when, is
`search.tracking.champion`'s to decide; the runs themselves are `search.tracking.runs`'s.

The champion is logged with explicit pip requirements and signature: loading it needs neither
`search` nor `models`, and MLflow's requirement inference (seconds per model) never runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from search.config.schema import StudyConfig
from search.core.records import outranks
from search.data.dataset import Dataset
from search.training.train import TrainResult

__all__ = ["CHAMPION", "CHECKPOINT_DIR", "Registry", "load_checkpoint", "read_checkpoint"]

CHAMPION = "champion"  # the alias of the best version
CHECKPOINT_DIR = "checkpoint"  # a trial run's artifact folder with its weights
_log = logging.getLogger(__name__)


def _prewarm() -> None:
    """The first `log_model` in a process pays ~3 s of one-time imports and a scan of the
    installed packages; do that in the background while the first trial trains."""
    try:
        import torch.export._trace  # noqa: F401
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map

        _init_packages_to_modules_map()
    except Exception:  # only an optimisation
        pass


def _pip_requirements() -> list[str]:
    import numpy

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={numpy.__version__}",
    ]


class Registry:
    """`@champion` and the versions of the study's registered model (named as the study)."""

    def __init__(
        self,
        client: MlflowClient,
        *,
        study_name: str,
        config: StudyConfig,
        experiment_id: str,
        prewarm: bool = True,
    ) -> None:
        self.client = client
        self.study_name = study_name
        self.config = config
        self.experiment_id = experiment_id
        self._warm = threading.Thread(target=_prewarm, daemon=True)
        if config.tracking.register_model and prewarm:
            self._warm.start()

    def ready(self) -> None:
        """Wait for the background warm-up of the first export (one-time imports)."""
        if self._warm.is_alive():
            self._warm.join()

    def register(
        self,
        run_id: str,
        *,
        number: int,
        value: float,
        result: TrainResult,
        data: Dataset,
        checkpoint: bool = True,
        force: bool = False,
        tiebreak: float | None = None,
    ) -> str | None:
        """Export, log and register the trial's model and move `@champion` to it (unless a
        better one holds it; `force`: regardless). `checkpoint=False` when `save_checkpoint`
        ran already. Called by `search.tracking.champion` (`promote`, `repair`), which checks the
        study first and writes the run's buffered metrics (`Tracker.flush`) before."""
        if not self.config.tracking.register_model or result.state_dict is None:
            return None
        import mlflow.pytorch
        from mlflow.models import infer_signature

        from models import create_model

        self.ready()
        model = create_model(**result.model_kwargs)
        model.load_state_dict(result.state_dict)
        model.eval()
        example = data.val.x[:4].float().div(data.max_value).cpu()
        with torch.no_grad():
            logits = model(example)
        signature = infer_signature(example.numpy(), logits.numpy())
        if checkpoint:
            self.save_checkpoint(run_id, result)
        logged = self.client.create_logged_model(
            self.experiment_id, name="model", source_run_id=run_id
        )
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            serialization_format="pt2",
            input_example=example.numpy(),
            signature=signature,
            pip_requirements=_pip_requirements(),
            run_id=run_id,
            model_id=logged.model_id,
            validate_serving_input=False,
            metadata={
                "classes": list(data.classes),
                "input": "float32 images in [0, 1], shape (N, C, H, W); returns logits",
                "pixel_scale": data.max_value,
            },
        )
        if tiebreak is None:
            tiebreak = result.best_stats.val_loss if result.best_stats is not None else math.inf
        version = self._create_version(
            info.model_uri, info.model_id, run_id, number, value, data, tiebreak
        )
        if force:
            self.client.set_registered_model_alias(self.study_name, CHAMPION, version)
        else:
            self.move_alias(version, value, tiebreak)
        return f"models:/{self.study_name}/{version}"

    def point_at(self, number: int, run_id: str) -> str | None:
        """Move `@champion` to the version already registered from trial `number`'s run (the
        newest, if several): its URI, or None when it has none. `repair` needs no second
        version of a model that has one, its test tags and description included."""
        try:
            versions = self.client.search_model_versions(f"name='{self.study_name}'")
        except MlflowException:
            return None
        mine = [v for v in versions if v.tags.get("trial") == str(number) and v.run_id == run_id]
        if not mine:
            return None
        version = max(mine, key=lambda v: int(v.version)).version
        self.client.set_registered_model_alias(self.study_name, CHAMPION, version)
        return f"models:/{self.study_name}/{version}"

    def champion_run(self) -> str | None:
        """The MLflow run of the version `@champion` points at (None: no alias yet)."""
        return self.champion()[2]

    def champion(self) -> tuple[int | None, str | None, str | None]:
        """(trial number, `models:/<study>/<version>`, run id) of the version `@champion`
        points at; (None, None, None) with no alias yet. A trial number alone does not say
        whose: another study of the same name (in another Optuna storage, or before
        `studies/` was deleted) registers into the same model; the run id does."""
        try:
            version = self.client.get_model_version_by_alias(self.study_name, CHAMPION)
        except MlflowException:
            return None, None, None
        trial = version.tags.get("trial")
        number = int(trial) if trial is not None and trial.isdigit() else None
        return number, f"models:/{self.study_name}/{version.version}", version.run_id

    def checkpoint_result(self, run_id: str) -> TrainResult:
        """The weights a trial saved with `save_checkpoint`, as `register` takes them."""
        kwargs, state = read_checkpoint(self.client, run_id)
        return TrainResult(stop_reason="", epochs_trained=0, state_dict=state, model_kwargs=kwargs)

    def save_checkpoint(self, run_id: str, result: TrainResult) -> None:
        """safetensors weights + the `create_model` arguments, to rebuild for fine-tuning."""
        from safetensors.torch import save_file

        assert result.state_dict is not None
        with tempfile.TemporaryDirectory() as tmp:
            save_file(
                {k: v.contiguous() for k, v in result.state_dict.items()},
                f"{tmp}/model.safetensors",
            )
            Path(tmp, "model_config.json").write_text(json.dumps(result.model_kwargs, indent=2))
            self.client.log_artifacts(run_id, tmp, CHECKPOINT_DIR)

    def _create_version(
        self,
        source: str,
        model_id: str,
        run_id: str,
        number: int,
        value: float,
        data: Dataset,
        tiebreak: float,
    ) -> str:
        with contextlib.suppress(MlflowException):  # already registered
            self.client.create_registered_model(
                self.study_name,
                description=f"Champion of regsearch study {self.study_name!r}.",
            )
        mv = self.client.create_model_version(
            self.study_name,
            source=source,
            run_id=run_id,
            model_id=model_id,  # a tracking server refuses a models:/m-… source without it
            tags={
                "trial": str(number),
                "value": repr(value),
                "val_loss": repr(tiebreak),  # decides between equal values (`best_trial`)
                "metric": self.config.objective.metric,
                "classes": json.dumps(list(data.classes)),
            },
        )
        return str(mv.version)

    def move_alias(self, version: str, value: float, tiebreak: float = math.inf) -> None:
        """Move `champion` unless another worker already registered a model at least as good
        (a better value, or the same value at a validation loss no higher: `best_trial`)."""
        try:
            current = self.client.get_model_version_by_alias(self.study_name, CHAMPION)
            best = float(current.tags.get("value", "nan"))
            held = float(current.tags.get("val_loss", "inf"))
            maximize = self.config.objective.direction == "maximize"
            if best == best and not outranks(value, tiebreak, best, held, maximize=maximize):
                return
        except MlflowException:
            pass  # no champion yet
        self.client.set_registered_model_alias(self.study_name, CHAMPION, version)

    def tag_version(self, uri: str, tags: Mapping[str, str]) -> None:
        """Set `tags` on the version `uri` (`models:/<study>/<version>`) names, e.g. that it
        is a refit on training + validation images (`search.study.refit.refit_tags`)."""
        version = uri.rpartition("/")[2]
        for key, value in tags.items():
            self.client.set_model_version_tag(self.study_name, version, key, value)

    def describe_champion(
        self,
        accuracy: float,
        images: int,
        *,
        run_id: str,
        note: str = "",
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Tag and describe the `@champion` version with its test accuracy (a worker of an
        earlier launch may have tagged it already: a tracking server then refuses the insert);
        `note`: a sentence more, and `tags` more (a refit says what it was trained on). Only
        when the alias holds a model of the champion's run `run_id`: never another study's."""
        try:
            mv = self.client.get_model_version_by_alias(self.study_name, CHAMPION)
            if mv.run_id != run_id:
                _log.warning(
                    "@champion (version %s) is not the champion trial's model: not described "
                    "with its test accuracy",
                    mv.version,
                )
                return
            for key, value in (tags or {}).items():
                if mv.tags.get(key) != value:
                    self.client.set_model_version_tag(self.study_name, mv.version, key, value)
            if mv.tags.get("test_accuracy") != repr(accuracy):
                self.client.set_model_version_tag(
                    self.study_name, mv.version, "test_accuracy", repr(accuracy)
                )
            self.client.update_model_version(
                self.study_name,
                mv.version,
                description=f"Trial {mv.tags.get('trial')}: {self.config.objective.metric} "
                f"{float(mv.tags.get('value', 'nan')):.4f}, test accuracy {accuracy:.4f} "
                f"({images} held-out images).{' ' + note if note else ''} Input: float32 "
                "images in [0, 1], shape (N, C, H, W); returns logits.",
            )
        except MlflowException as exc:  # the evidence stands; the description is a courtesy
            _log.warning("@champion not described with its test accuracy: %s", exc)


def read_checkpoint(
    client: MlflowClient, run_id: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, CHECKPOINT_DIR, tmp)
        kwargs = json.loads(Path(local, "model_config.json").read_text())
        state = load_file(str(Path(local, "model.safetensors")))
    return kwargs, state


def load_checkpoint(client: MlflowClient, run_id: str) -> torch.nn.Module:
    """Rebuild a trial's model from its safetensors checkpoint (for fine-tuning or testing)."""
    from models import create_model

    kwargs, state = read_checkpoint(client, run_id)
    model = create_model(**kwargs)
    model.load_state_dict(state)
    return model.eval()
