"""regsearch from Python: run a study, read its verdict, load its champion — for notebooks and
scripts, with the CLI's validation and its one-line messages (raised as `UserError`).

```python
from search.api import load_champion, run

study = run("studies/digits.yaml", overrides=["search.n_trials=8"])
study.best["champion_uri"]        # the same dict as `regsearch best STUDY --json`
model = load_champion(study.name, tracking_uri=study.tracking_uri)  # images in [0, 1] -> logits
```

A config may be a study file, a mapping (the keys of a study file) or None (the built-in
digits study). A factory defined in the notebook itself runs in-process as
`model.name: "__main__:make_net"`. A launch puts back what it sets for the whole process
(`_process_state`): MLflow's tracking URI, Optuna's log level, torch's thread count and random
state, the MLflow loggers' levels.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.core.errors import UserError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["StudyResult", "best", "load_champion", "run"]


@dataclass(frozen=True)
class StudyResult:
    """A finished launch: the study's name, where it lives, and its verdict (`best`)."""

    name: str
    storage: str
    tracking_uri: str | None  # the MLflow store its runs went to; None: tracking off
    best: dict[str, Any] | None  # `regsearch best --json`; None: no trial completed
    metric: str = "val_accuracy"

    @property
    def verdict(self) -> str | None:
        """The verdict line `regsearch run` and `best` print."""
        if self.best is None:
            return None
        from search.report.summary import verdict

        return verdict(self.best, self.metric)


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
_LOGGERS = ("mlflow", "mlflow.store.db.utils")  # quietened by `search.tracking.runs.Tracker`


@contextlib.contextmanager
def _process_state() -> Iterator[None]:
    """Put back what a launch sets for the whole process: MLflow's tracking and registry URIs
    (module state and the environment variables `mlflow.set_tracking_uri` writes), Optuna's
    log level, torch's thread count and random state, the MLflow loggers' levels."""
    import optuna
    import torch
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking = getattr(tracking_utils, "_tracking_uri", None)
    registry = getattr(registry_utils, "_registry_uri", None)
    variables = {name: os.environ.get(name) for name in _URI_VARIABLES}
    verbosity = optuna.logging.get_verbosity()
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()  # every trial seeds torch with its own seed
    loggers = {name: logging.getLogger(name).level for name in _LOGGERS}
    # The first import of `mlflow.pytorch` calls `logging.basicConfig(level=ERROR)` (MLflow
    # 3.x, `_lightning_autolog`): the notebook's root logger would go silent below ERROR.
    root = logging.getLogger()
    root_state = (root.level, root.handlers[:])
    try:
        yield
    finally:
        torch.set_rng_state(rng)
        for name, level in loggers.items():
            logging.getLogger(name).setLevel(level)
        root.setLevel(root_state[0])
        root.handlers[:] = root_state[1]
        tracking_utils.set_tracking_uri(tracking)  # type: ignore[arg-type]  # None: unset
        registry_utils._registry_uri = registry
        for name, value in variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        optuna.logging.set_verbosity(verbosity)
        torch.set_num_threads(threads)


def _config(
    config: str | Path | Mapping[str, Any] | None, overrides: Iterable[str], flags: dict[str, Any]
) -> Any:
    from search.study.studyfile import load_config

    if config is None or isinstance(config, str | Path):
        return load_config(
            Path(config) if config is not None else None, overrides=overrides, flags=flags
        )
    if not isinstance(config, Mapping):
        raise UserError(
            f"config: expected a study file, a mapping or None, got {type(config).__name__}"
        )
    return load_config(None, overrides=overrides, flags=flags, base=config)


def run(
    config: str | Path | Mapping[str, Any] | None = None,
    *,
    overrides: Iterable[str] = (),
    study: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    device: str | None = None,
    threads: int | None = None,
    workers: int = 1,
    quiet: bool = True,
) -> StudyResult:
    """Create or resume a study and run its trials, as `regsearch run` does; its verdict.

    `overrides` are `--set` strings (`"train.epochs=5"`); `workers` > 1 starts worker
    processes (a model or data set defined in the notebook cannot reach them: put it in a
    module). Raises `UserError` with the CLI's one-line message for any bad input."""
    from search.core.urls import absolute_sqlite, resolve_tracking_uri
    from search.run.launch import check_tracking, run_in_process, run_workers
    from search.run.options import RunOptions
    from search.study.storage import resolve_storage_url

    flags = {
        "study": study,
        "search.n_trials": n_trials,
        "search.timeout": timeout,
        "train.device": device,
    }
    if isinstance(overrides, str):  # one `--set` string, not its characters
        overrides = [overrides]
    cfg = _config(config, overrides, flags)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"workers must be an integer >= 1, got {workers!r}")
    if workers > 1:
        for key, name in (("model.name", cfg.model.name), ("dataset.name", cfg.dataset.name)):
            if str(name).startswith("__main__:"):
                raise UserError(
                    f"{key}: {name} is defined in this process, which worker processes "
                    "cannot import: put it in a module (package.module:callable) or run with "
                    "workers=1"
                )
    url = resolve_storage_url(storage, cfg.storage)
    check_tracking(cfg, tracking_uri)
    options = RunOptions(url, tracking_uri, device, threads=threads, quiet=quiet)
    with _process_state():
        if workers == 1:
            run_in_process(cfg, options, summary=not quiet)
        else:
            run_workers(cfg, options, [None] * workers, summary=not quiet)
    verdict = _best(cfg.study, options.storage())  # the launch's storage, not opened again
    uri = resolve_tracking_uri(tracking_uri, cfg.tracking.uri) if cfg.tracking.enabled else None
    # Handles that outlive a change of folder: relative SQLite files made absolute.
    return StudyResult(
        cfg.study,
        absolute_sqlite(url),
        None if uri is None else absolute_sqlite(uri),
        verdict,
        cfg.objective.metric,
    )


def best(study: str, *, storage: str | None = None) -> dict[str, Any] | None:
    """The study's verdict: the dict `regsearch best STUDY --json` prints (None before any
    trial completed)."""
    from search.study.storage import open_existing

    return _best(study, open_existing(storage))


def _best(study: str, storage: Any) -> dict[str, Any] | None:
    from search.report.summary import best_summary
    from search.study.studies import load_existing

    opened, _ = load_existing(study, storage)
    return best_summary(opened)


def load_champion(study: str, *, tracking_uri: str | None = None) -> nn.Module:
    """The study's registered champion (`models:/<study>@champion`) on the CPU: float images
    in [0, 1], shape (N, C, H, W), in; logits out. The exported program (a `torch.fx`
    module) is fixed in evaluation mode: call it under `torch.no_grad()`; `.eval()` and
    `.train()` raise NotImplementedError."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from search.core.errors import first_line
    from search.core.urls import resolve_tracking_uri, sqlite_path
    from search.tracking.champion import champion_uri

    uri = resolve_tracking_uri(tracking_uri, None)
    local = sqlite_path(uri)
    if local is not None and not local.exists():  # do not create an empty store by looking
        raise UserError(f"no champion for study {study!r}: no tracking store {local}")
    with _process_state():
        import mlflow.pytorch  # in the guard: its first import configures the root logger

        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            model: nn.Module = mlflow.pytorch.load_model(champion_uri(study))
        except MlflowException as exc:
            raise UserError(
                f"no champion for study {study!r} at {uri}: {first_line(exc)}"
            ) from None
    return model
