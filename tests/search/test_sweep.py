"""The size sweep: one study per training-set fraction, smallest first, warm-started from the
one before, resumable, and drawn by `report` (figure, CSV, JSON) and shown by `status`."""

from __future__ import annotations

import csv
import itertools
import json
import re
import time
from pathlib import Path

import optuna
import pytest

from search.core.errors import UserError
from search.report.sweep import trends
from search.study.evidence import confirmed_champion
from search.study.studyfile import load_config
from search.study.sweep import WARM_START_ATTR, parse_fractions
from tests.helpers import regsearch

FRACTIONS = "0.1,0.5,1"  # two warm-start links
NAMES = ["dg-f0.1", "dg-f0.5", "dg-f1"]
ARGS = (
    "run", "--study", "dg", "--fractions", FRACTIONS, "--n-trials", "3",
    "--set", "train.epochs=3",
    "--set", "search.confirm={top_k: 1, seeds: 2, ablation: false}",
    "--quiet",
)  # fmt: skip


def _trials(cwd: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{cwd}/studies/regsearch.db"
    return optuna.load_study(study_name=name, storage=storage).get_trials()


@pytest.fixture(scope="session")  # kept while xdist interleaves modules
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("sweep")
    started = time.monotonic()
    proc = regsearch(*ARGS, cwd=cwd, confirm=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (cwd / "launch.json").write_text(
        json.dumps({"seconds": time.monotonic() - started, "output": proc.stdout + proc.stderr})
    )
    return cwd


def _seconds(text: str) -> int:
    """`1 h 02 min`, `1 min 33 s` or `51 s` in seconds."""
    units = {"h": 3600, "min": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+) (h|min|s)\b", text))


@pytest.mark.slow
def test_each_study_of_a_sweep_says_how_long_it_took_itself(swept: Path) -> None:
    """Each was timed from the start of the whole sweep: their times added up to more than
    the sweep took."""
    launch = json.loads((swept / "launch.json").read_text())
    took = re.findall(r"(dg-f[\d.]+): this launch took ([^\n]+)", launch["output"])
    assert [name for name, _ in took] == NAMES
    assert sum(_seconds(t) for _, t in took) <= launch["seconds"] + 1


@pytest.mark.slow
def test_a_sweep_runs_one_warm_started_study_per_fraction(swept: Path) -> None:
    status = json.loads(regsearch("status", "dg", "--json", cwd=swept).stdout)
    storage = f"sqlite:///{swept}/studies/regsearch.db"
    assert [r["study"] for r in status] == NAMES
    sizes = [r["train_images"] for r in status]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] / 5, sizes
    assert all(r["champion_test"] is not None for r in status)
    for row in status:  # the gap of the model trained on the training split, not the refit's
        champion = confirmed_champion(optuna.load_study(study_name=row["study"], storage=storage))
        assert champion is not None
        gap = champion.user_attrs["train_accuracy"] - champion.user_attrs["val_accuracy"]
        assert row["train_val_gap"] == pytest.approx(gap)
    for previous, name in itertools.pairwise(NAMES):
        seeded = [t for t in _trials(swept, name) if WARM_START_ATTR in t.user_attrs]
        assert seeded and all(t.user_attrs[WARM_START_ATTR] == previous for t in seeded)
        before = [t.params for t in _trials(swept, previous) if t.params]
        assert all(t.params in before for t in seeded), "the previous study's configurations"


@pytest.mark.slow
def test_a_finished_sweep_resumes_without_training_again(swept: Path) -> None:
    counts = [len(_trials(swept, n)) for n in NAMES]
    proc = regsearch(*ARGS, cwd=swept, confirm=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [len(_trials(swept, n)) for n in NAMES] == counts


@pytest.mark.slow
def test_report_draws_the_sweep_with_every_fraction(swept: Path) -> None:
    proc = regsearch("report", "dg", cwd=swept)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = swept / "reports" / "dg"
    assert swept / proc.stdout.strip() == out / "index.html"
    png = (out / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["study"] for r in rows] == NAMES
    assert [float(r["fraction"]) for r in rows] == [0.1, 0.5, 1.0]
    assert all(r["champion_test"] and r["weight_decay"] for r in rows)
    data = json.loads((out / "sweep.json").read_text())
    assert len(data["rows"]) == len(NAMES) and data["trends"]
    page = (out / "index.html").read_text()
    assert "sweep.png" in page and all(name in page for name in NAMES)


def test_fractions_are_checked_and_sorted() -> None:
    assert parse_fractions("1,0.1,0.5") == [0.1, 0.5, 1.0]
    for bad, said in (("0,0.5", "0 is not in"), ("0.5,x", "'x' is not a number"),
                      ("0.5,0.5", "repeats"), ("1.5", "1.5 is not in"),
                      ("0.1,0.1000001", "would both be the study of fraction 0.1")):  # fmt: skip
        with pytest.raises(UserError, match=said):
            parse_fractions(bad)
    with pytest.raises(UserError, match=r"sweep\.fractions: .*would both be the study of"):
        load_config(overrides=["sweep={fractions: [0.1, 0.1000001]}"])


def test_a_bad_fraction_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    proc = regsearch("run", "--fractions", "0.5,2", cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["regsearch: error: --fractions: 2 is not in (0, 1]"]
    assert not (tmp_path / "studies").exists(), "nothing created"


def _row(n: int, **values: float) -> dict:  # type: ignore[type-arg]
    spread = {k: [v, v] for k, v in values.items()}
    return {"train_images": n, "fraction": 0, "regularizers": values, "spread": spread}


def test_trends_say_which_way_each_regularizer_moves_with_data() -> None:
    said = trends(
        [_row(180, aug_strength=0.8, dropout=0.2), _row(1078, aug_strength=0.3, dropout=0.2)]
    )
    assert said == [
        "aug_strength: falls from 0.8 at 180 images to 0.3 at 1,078 images",
        "dropout: about the same (0.2 at 180 images, 0.2 at 1,078 images; each within the "
        "other's spread over the top configurations)",
    ]


def test_a_value_within_one_end_s_spread_only_is_not_about_the_same() -> None:
    first = _row(268, mixup_alpha=0.2)
    first["spread"]["mixup_alpha"] = [0.2, 0.964]
    last = _row(1077, mixup_alpha=0.545)
    last["spread"]["mixup_alpha"] = [0.545, 0.964]
    assert trends([first, last]) == [
        "mixup_alpha: rises from 0.2 at 268 images to 0.55 at 1,077 images (the spreads over "
        "the top configurations overlap)"
    ]


def test_a_val_loss_sweep_reports_contributions_in_its_own_units() -> None:
    rows = [_row(109, dropout=0.1), _row(1077, dropout=0.1)]
    for row, mean in zip(rows, (-0.01647, 0.002), strict=True):
        row["metric"] = "val_loss"
        row["contributions"] = {"dropout": {"mean": mean, "low": None, "high": None}}
    (said,) = trends(rows)
    assert said.endswith(
        "taking it away costs -0.01647 val_loss at 109 images, +0.002 val_loss at 1,077 images"
    )


def test_the_warm_start_carries_an_ablated_champion_only_where_its_range_holds_zero() -> None:
    from search.core.records import CONFIG_ATTR
    from search.study.sweep import _holds_zero

    study = optuna.create_study(direction="maximize")
    study.set_user_attr(CONFIG_ATTR, load_config().portable_dict())
    assert not _holds_zero(study, "weight_decay"), "log range from 1e-5: 0 is not in it"
    assert _holds_zero(study, "dropout") and _holds_zero(study, "mixup_alpha")


@pytest.mark.slow
def test_a_sweep_named_after_a_study_sizes_each_fraction_and_extends_by_name(
    tmp_path: Path,
) -> None:
    """The docs' own order: the default study, then a sweep of the same name. The sweep does
    not inherit the study's resolved batch size; `status` shows both; `--set
    sweep.warm_start=false` goes beside `--fractions`; and the sweep extends by its name
    alone, with the config it was launched with."""
    tiny = ("--set", "search.n_trials=1", "--set", "train.epochs=1", "--set", "search.confirm=none")
    assert regsearch("run", *tiny, cwd=tmp_path).returncode == 0
    proc = regsearch("run", "--study", "digits", "--fractions", "0.1,0.25", *tiny,
                     "--set", "sweep.warm_start=false", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    storage = f"sqlite:///{tmp_path}/studies/regsearch.db"

    def batch(name: str) -> int:
        study = optuna.load_study(study_name=name, storage=storage)
        return int(study.user_attrs["regsearch_config"]["train"]["batch_size"])

    assert (batch("digits"), batch("digits-f0.1"), batch("digits-f0.25")) == (128, 16, 32)
    assert not any(WARM_START_ATTR in t.user_attrs for t in _trials(tmp_path, "digits-f0.25"))
    shown = regsearch("status", "digits", cwd=tmp_path).stdout
    assert "study digits" in shown and "digits is also the name of a size sweep" in shown
    assert "digits-f0.25" in shown
    proc = regsearch("run", "--study", "digits", "--fractions", "0.5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming with the config stored in the sweep" in proc.stdout + proc.stderr
    trials = _trials(tmp_path, "digits-f0.5")  # the stored budget: 1 trial of 1 epoch
    assert [t.user_attrs["epochs_trained"] for t in trials] == [1]
    for name in ("digits-f0.1", "digits-f0.25", "digits-f0.5"):  # 0.5 joined the others
        study = optuna.load_study(study_name=name, storage=storage)
        assert study.user_attrs["sweep_config"]["sweep"]["fractions"] == [0.1, 0.25, 0.5]


def test_trials_to_target_count_until_the_best_value_first_reaches_it() -> None:
    import datetime

    from search.bench.sweep import to_target

    t0 = datetime.datetime(2026, 1, 1)
    trials = [
        optuna.trial.create_trial(
            value=value,
            user_attrs={},
            state=optuna.trial.TrialState.COMPLETE,
        )
        for value in (0.5, 0.9, 0.8, 0.97)
    ]
    for number, trial in enumerate(trials):
        trial.number = number
        trial.datetime_start = t0 + datetime.timedelta(seconds=10 * number)
        trial.datetime_complete = t0 + datetime.timedelta(seconds=10 * number + 5)
    assert to_target(trials, 0.9) == (2, 15.0)
    assert to_target(trials, 0.95) == (4, 35.0)
    assert to_target(trials, 0.99) == (-1, -1.0)
