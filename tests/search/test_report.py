"""`regsearch report`: a real study run through the CLI, then its report; edge cases in process."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from search.report.page import write_report
from tests.helpers import regsearch

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CONTRACT = ("weight_decay", "dropout", "aug_strength", "mixup_alpha", "label_smoothing")
SMALL = (
    "--threads",
    "1",
    "--set",
    "train.epochs=3",
    "--set",
    "model.width=8",
    "--set",
    "tracking.enabled=false",
    # Prune from the second epoch on, so the report has pruned curves to show.
    "--set",
    "search.pruner={name: median, n_startup_trials: 2, n_warmup_steps: 1}",
    "--quiet",
)


@pytest.fixture(scope="session")  # kept while xdist interleaves modules
def reported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-trial digits study with one trial still RUNNING (as if a worker were busy), and its
    report in `out/`."""
    root = tmp_path_factory.mktemp("report")
    proc = regsearch("run", "--study", "small", "--n-trials", "6", *SMALL, cwd=root)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="small", storage=f"sqlite:///{root}/studies/regsearch.db")
    running = study.ask({"dropout": FloatDistribution(0.0, 0.6)})
    running.report(0.1, 1)
    proc = regsearch("report", "small", "--out", "out", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(Path("out") / "index.html")
    return root / "out"


def test_report_page_names_every_searched_parameter(reported: Path) -> None:
    page = (reported / "index.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for name in CONTRACT:
        assert name in page
    assert page.count("Plotly.newPlot") >= 4, "history, importances, parallel, slices, curves"
    assert "1 running trial(s) are not included" in page
    assert "<script src=" not in page, "plotly.js is inlined: the page works offline"
    assert "Champion trial" in page and "best epoch" in page


def test_report_writes_real_pngs_named_after_the_parameters(reported: Path) -> None:
    expected = {f"regularizer-{name}.png" for name in CONTRACT} | {
        "learning-curves.png",
        "epochs.png",
    }
    assert {p.name for p in reported.glob("*.png")} == expected
    page = (reported / "index.html").read_text(encoding="utf-8")
    for name in expected:
        data = (reported / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 5_000, name
        assert f"href='{name}'" in page, "each figure is embedded and links to its file"
    assert not list(reported.glob(".*")), "no temporary files left behind"


def test_report_for_an_unknown_study_is_a_user_error(reported: Path) -> None:
    proc = regsearch("report", "nope", "--out", "elsewhere", cwd=reported.parent)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "regsearch: error: unknown study 'nope'; known: small"
    assert not (reported.parent / "elsewhere").exists()


# --------------------------------------------------------------------------- in process


def _trial(
    number: int,
    dropout: float,
    *,
    state: TrialState = TrialState.COMPLETE,
    epochs: int = 4,
) -> optuna.trial.FrozenTrial:
    curve = {e: 0.5 + 0.1 * e - dropout / 10 for e in range(1, epochs + 1)}
    return create_trial(
        state=state,
        value=curve[epochs] if state == TrialState.COMPLETE else None,
        params={"dropout": dropout},
        distributions={"dropout": FloatDistribution(0.0, 0.7)},
        intermediate_values=curve,
        user_attrs={
            "train_accuracy": 1.0 - dropout / 5,
            "val_accuracy": curve[epochs],
            "epochs_trained": epochs,
            "stop_reason": "max_epochs" if state == TrialState.COMPLETE else "pruned",
        },
    )


def test_one_completed_trial_skips_importances_with_a_note(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize", study_name="one")
    study.add_trials([_trial(0, 0.3), _trial(1, 0.5, state=TrialState.PRUNED, epochs=2)])
    result = write_report(study, tmp_path / "out")
    title = "Parameter importances (fANOVA, search trials)"
    assert "at least 2 completed trials" in result.notes[title]
    page = result.index.read_text(encoding="utf-8")
    assert "Not shown: needs at least 2 completed trials" in page
    assert sorted(p.name for p in result.pngs) == [
        "epochs.png",
        "learning-curves.png",
        "regularizer-dropout.png",
    ]


def test_a_study_without_finished_trials_still_gets_a_page(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize", study_name="empty")
    study.ask()  # RUNNING: ignored
    result = write_report(study, tmp_path / "out")
    assert result.index.stat().st_size > 0
    assert result.pngs == []
    assert "No completed trial yet" in result.index.read_text(encoding="utf-8")


def test_grid_levels_are_compared_in_the_regularizer_figure(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize", study_name="grid")
    study.add_trials([_trial(i, d) for i, d in enumerate((0.0, 0.1, 0.3, 0.5, 0.7))])
    result = write_report(study, tmp_path / "out")
    assert not result.notes, result.notes
    assert (tmp_path / "out" / "regularizer-dropout.png").read_bytes().startswith(PNG_MAGIC)


def test_settings_of_a_grid_over_two_regularizers_are_compared(tmp_path: Path) -> None:
    """The mix exercise: none / MixUp / CutMix / both, as four settings side by side."""
    space = {
        "mixup_alpha": CategoricalDistribution([0.0, 0.4]),
        "cutmix_alpha": CategoricalDistribution([0.0, 1.0]),
    }
    study = optuna.create_study(direction="maximize", study_name="mix")
    for i, (mixup, cutmix) in enumerate([(0.0, 0.0), (0.4, 0.0), (0.0, 1.0), (0.4, 1.0)]):
        study.add_trial(
            create_trial(
                value=0.9 + i / 100,
                params={"mixup_alpha": mixup, "cutmix_alpha": cutmix},
                distributions=space,
                user_attrs={"train_accuracy": 0.99, "val_accuracy": 0.9 + i / 100},
            )
        )
    result = write_report(study, tmp_path / "out")
    names = {p.name for p in result.pngs}
    assert {"settings.png", "regularizer-mixup_alpha.png", "regularizer-cutmix_alpha.png"} <= names
    assert (tmp_path / "out" / "settings.png").read_bytes().startswith(PNG_MAGIC)


def test_the_report_says_a_confirm_phase_is_under_way_rather_than_absent() -> None:
    from search.report.markup import verdict_section

    best = {"trial": 3, "value": 0.9, "champion": None, "test": None, "baseline": None,
            "confirm": {"started": True, "pending": 1, "complete": False}}  # fmt: skip
    page = verdict_section(best, "val_accuracy")
    assert "confirm phase: 1 retrain to go" in page
    assert "The confirm phase is under way (1 to go)" in page and "No confirm phase yet" not in page
    best["confirm"] = None
    assert "No confirm phase yet" in verdict_section(best, "val_accuracy")


def test_the_champion_table_of_a_refit_shows_no_validation_score_of_its_own() -> None:
    """A refit trained on the validation images: its val accuracy there (0.997 on the digits)
    is no score; the table says what its value is and what it trained on."""
    from search.core.records import (
        PHASE_ATTR,
        REFIT,
        TRAIN_IMAGES_ATTR,
        VAL_ACCURACY_ATTR,
    )
    from search.report.markup import best_table

    refit = create_trial(
        value=0.982,
        params={"dropout": 0.3},
        distributions={"dropout": FloatDistribution(0.0, 0.6)},
        user_attrs={PHASE_ATTR: REFIT, TRAIN_IMAGES_ATTR: 1437, VAL_ACCURACY_ATTR: 0.9972},
    )
    page = best_table(refit, "val_accuracy", 20)
    assert "val_accuracy (its configuration&#x27;s confirm mean)" in page
    assert "training + validation, 1,437 images" in page
    assert "0.9972" not in page and "best epoch" not in page
