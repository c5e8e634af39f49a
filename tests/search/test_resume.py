"""Resuming a study: no replayed samples, resume by name, switching sampler or pruner by name,
and a launch that fails fast on an unreachable tracking server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest

from search.config.space import SearchSpace
from search.core.errors import UserError
from search.report.summary import table_params, trials_table
from search.study.storage import open_storage
from search.study.studies import create_or_resume, make_pruner, make_sampler, sampler_seed
from search.study.studyfile import load_config
from tests.helpers import regsearch


def _launch(config_overrides: list[str], url: str, n_trials: int) -> None:
    """One launch as the runner makes it (create_or_resume, the service's sampler), with a
    cheap objective that samples the real space."""
    config = load_config(overrides=[*config_overrides, f"search.n_trials={n_trials}"])
    study, _ = create_or_resume(config, open_storage(url, config.search))
    space = SearchSpace.from_config(config)

    def objective(trial: optuna.Trial) -> float:
        reg = space.sample(trial).regularization
        return reg.dropout + reg.aug_strength

    done = len(study.trials)
    study.optimize(objective, n_trials=n_trials - done)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_three_launches_of_four_trials_give_twelve_distinct_configurations(
    tmp_path: Path, sampler: str
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    overrides = [f"search.sampler.name={sampler}", "search.pruner=none"]
    for total in (4, 8, 12):
        _launch(overrides, url, total)
    study = optuna.load_study(study_name="digits", storage=url)
    configs = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(study.trials) == 12
    assert len(configs) == 12, "a resumed launch replayed an earlier launch's samples"


def test_a_fresh_study_is_reproducible(tmp_path: Path) -> None:
    params = []
    for name in ("a", "b"):
        url = f"sqlite:///{tmp_path}/{name}.db"
        _launch(["search.pruner=none"], url, 3)
        params.append(
            [t.params for t in optuna.load_study(study_name="digits", storage=url).trials]
        )
    assert params[0] == params[1]


def test_sampler_seed_keeps_the_first_launch_and_mixes_in_the_trial_count() -> None:
    assert sampler_seed(7) == 7
    assert sampler_seed(7, worker_index=2) == 9
    seeds = {sampler_seed(7, worker_index=w, trials_before=n) for w in (0, 1) for n in (4, 8)}
    assert len(seeds) == 4


@pytest.mark.parametrize(
    ("overrides", "pruner"),
    [
        (["search.pruner.name=hyperband"], optuna.pruners.HyperbandPruner),
        (["search.pruner.name=successive-halving"], optuna.pruners.SuccessiveHalvingPruner),
        (["search.pruner.name=wilcoxon"], optuna.pruners.WilcoxonPruner),
        (["search.pruner.name=none"], optuna.pruners.NopPruner),
        (
            ["search.pruner.name=hyperband", "search.pruner.min_resource=2"],
            optuna.pruners.HyperbandPruner,
        ),
    ],
)
def test_switching_the_pruner_by_name_drops_the_defaults_options(
    overrides: list[str], pruner: type
) -> None:
    config = load_config(overrides=overrides)
    built = make_pruner(config)
    assert isinstance(getattr(built, "pruner", built), pruner)
    assert "n_startup_trials" not in config.search.pruner.options


@pytest.mark.parametrize("name", ["random", "gp", "cmaes", "qmc"])
def test_switching_the_sampler_by_name_keeps_only_the_seed(name: str) -> None:
    config = load_config(overrides=[f"search.sampler.name={name}"])
    assert config.search.sampler.options == {"seed": 0}
    assert make_sampler(config) is not None


def test_an_option_the_chosen_class_does_not_take_is_named() -> None:
    with pytest.raises(UserError, match=r"search.pruner \(hyperband\): unknown option n_startup"):
        load_config(overrides=["search.pruner.name=hyperband", "search.pruner.n_startup_trials=2"])
    with pytest.raises(UserError, match=r"search.sampler \(random\): unknown option n_startup"):
        load_config(overrides=["search.sampler.name=random", "search.sampler.n_startup_trials=2"])


TINY = ("--set", "train.epochs=1", "--set", "tracking.enabled=false", "--quiet")


def test_resume_by_name_uses_the_stored_config(tmp_path: Path) -> None:
    first = regsearch(
        "run",
        "--study",
        "quick",
        "--n-trials",
        "1",
        "--set",
        "search.pruner=none",
        *TINY,
        "--set",
        "space.dropout=0.25",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    # No --set repeated: the stored config (1 epoch, dropout 0.25, no tracking) is used.
    again = regsearch("run", "--study", "quick", "--n-trials", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming with the config stored in the study" in again.stderr
    study = optuna.load_study(
        study_name="quick", storage=f"sqlite:///{tmp_path}/studies/regsearch.db"
    )
    assert len(study.trials) == 2
    assert all(t.user_attrs["epochs_trained"] == 1 for t in study.trials)
    assert not (tmp_path / "mlruns" / "mlflow.db").exists(), "tracking stayed off"
    # Nothing left to run: say how to run more.
    done = regsearch("run", "--study", "quick", "--n-trials", "2", cwd=tmp_path)
    assert done.returncode == 0
    assert "already has 2 finished trials" in done.stderr and "--n-trials 8" in done.stderr
    # A key outside the budget and machine-local ones still differs: exit 2, named.
    differs = regsearch("run", "--study", "quick", "--set", "train.epochs=3", cwd=tmp_path)
    assert differs.returncode == 2
    assert "train.epochs" in differs.stderr and "regsearch worker quick" in differs.stderr


def test_unreachable_tracking_server_fails_fast_and_creates_nothing(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = regsearch(
        "run",
        "--tracking-uri",
        "http://someone:s3cret@127.0.0.1:1",
        "--n-trials",
        "1",
        cwd=tmp_path,
    )
    assert time.monotonic() - start < 10 + 5  # the probe's budget plus interpreter start
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "cannot reach tracking server http://someone:***@127.0.0.1:1" in lines[0]
    )
    assert "s3cret" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no study, run or folder"


def test_a_web_server_that_is_no_mlflow_server_fails_fast_and_creates_nothing(
    tmp_path: Path,
) -> None:
    """It answered the reachability probe (a 404 is an answer), and the study was created
    before MLflow refused it."""
    import http.server
    import threading

    site = tmp_path / "site"
    site.mkdir()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(site))  # noqa: E731
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        proc = regsearch("run", "--tracking-uri", uri, "--n-trials", "1", cwd=tmp_path)
        server.shutdown()
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line == (
        f"regsearch: error: {uri} is no MLflow tracking server "
        "(/api/2.0/mlflow/experiments/search answers 404); fix --tracking-uri / "
        "$MLFLOW_TRACKING_URI, or set tracking.enabled: false"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"], "no study, run or folder"


def test_trial_tables_show_every_searched_parameter_and_fixed_values(tmp_path: Path) -> None:
    config = load_config(
        overrides=[
            "space.dropout=0.3",
            "space.lr={type: float, low: 0.001, high: 0.01, log: true}",
            "search.pruner=none",
        ]
    )
    url = f"sqlite:///{tmp_path}/t.db"
    study, _ = create_or_resume(config, open_storage(url, config.search))
    space = SearchSpace.from_config(config)
    study.optimize(lambda t: space.sample(t).train.lr, n_trials=2)
    fixed, names = table_params(study)
    assert "lr" in names and "dropout" in names and fixed["dropout"] == 0.3
    table = trials_table(study)
    columns = {str(c.header): list(c._cells) for c in table.columns}
    # A fixed regularizer shows its value; the recipe (trial 0) trains with its own dropout.
    rows = dict(zip(columns["#"], columns["dropout"], strict=True))
    assert rows == {"0": "0.5", "1": "0.3"}
    assert all(cell != "–" for cell in columns["lr"]), "a searched train key has a column"


def test_a_launch_s_timeout_is_not_stored_for_the_next_launch(tmp_path: Path) -> None:
    """`--timeout` stops one launch: a resume by name and a joining worker start from the
    stored config, and must run to the budget unless they are given their own."""
    from search.study.studies import stored_config

    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    config = load_config(overrides=["study=t", "search.timeout=6"])
    assert config.search.timeout == 6
    create_or_resume(config, storage)
    stored = stored_config(storage, "t")
    assert stored is not None and "timeout" not in stored["search"]
    assert load_config(None, base=stored).search.timeout is None
    # A file that sets one still applies it to each launch made with that file.
    create_or_resume(config, storage)


def test_a_timed_out_launch_says_so_and_a_resume_by_name_runs_to_the_budget(
    tmp_path: Path,
) -> None:
    tiny = ["--set", "train.epochs=2", "--set", "search.confirm=none"]
    first = regsearch("run", "--study", "t", "--n-trials", "3", "--timeout", "1e-6", *tiny,
                      cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    assert "t: the timeout (1e-06 s) has passed: this launch starts no new trial" in first.stderr
    resumed = regsearch("run", "--study", "t", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "timeout" not in resumed.stderr
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/studies/regsearch.db")
    assert sum(t.state.is_finished() for t in study.trials) == 3


def test_a_study_still_searching_does_not_count_confirm_retrains_to_go(tmp_path: Path) -> None:
    """Mid-search, the confirm plan for today's top configurations is no promise: the verdict
    says the phase comes after the search rather than a count of retrains to go."""
    from search.report.summary import best_summary, verdict

    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study, _ = create_or_resume(load_config(overrides=["study=mid", "search.n_trials=6"]), storage)
    study.optimize(lambda trial: 0.9, n_trials=1)  # the enqueued baseline trial, done
    best = best_summary(study)
    assert best is not None and best["confirm"]["started"] is False
    line = verdict(best, "val_accuracy")
    assert "confirm phase: after the search" in line and "retrains to go" not in line


def test_set_study_names_a_new_study_as_study_does(tmp_path: Path) -> None:
    """Without a study file, `--set study=other` starts from the defaults like `--study
    other`, not from the config stored in the default study."""
    tiny = ["--n-trials", "1", "--set", "search.confirm=none", "--quiet"]
    first = regsearch("run", *tiny, "--set", "train.epochs=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    other = regsearch("run", *tiny, "--set", "study=other", cwd=tmp_path)
    assert other.returncode == 0, other.stderr[-2000:]
    storage = f"sqlite:///{tmp_path}/studies/regsearch.db"
    stored = optuna.load_study(study_name="other", storage=storage).user_attrs
    assert stored["regsearch_config"]["train"]["epochs"] == 20  # the default, not 1


@pytest.mark.slow
def test_best_names_the_champion_alias_before_the_study_ends(tmp_path: Path) -> None:
    """`@champion` points at the best trial from the first one on; `best` said so only once
    the study had ended (its `champion_uri` was null for a study stopped part way)."""
    tiny = [
        "--set",
        "train.epochs=1",
        "--set",
        "search.confirm=none",
        "--set",
        "search.pruner=none",
    ]
    proc = regsearch("run", "--study", "part", "--n-trials", "500", "--timeout", "15", *tiny,
                     cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = optuna.load_study(
        study_name="part", storage=f"sqlite:///{tmp_path}/studies/regsearch.db"
    )
    assert 0 < sum(t.state.is_finished() for t in study.trials) < 500
    best = json.loads(regsearch("best", "part", "--json", cwd=tmp_path).stdout)
    assert best["champion_uri"] == "models:/part@champion"
    text = regsearch("best", "part", cwd=tmp_path).stdout
    assert "models:/part@champion" in text
