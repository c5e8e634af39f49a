"""The example study files in studies/ stay valid as the config evolves."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.config.space import SearchSpace
from search.study.studyfile import load_config

STUDIES = sorted((Path(__file__).resolve().parents[2] / "studies").glob("*.yaml"))


def test_there_are_example_studies() -> None:
    assert len(STUDIES) >= 2


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_example_study_is_valid(path: Path) -> None:
    config = load_config(path)
    assert config.study == path.stem
    space = SearchSpace.from_config(config)
    searched = {e.name for e in space.searched}
    if path.name.startswith("exercise-"):
        # The exercises vary one question on a grid and fix everything else.
        assert config.search.sampler.name == "grid"
        assert searched & {"dropout", "aug_strength", "mixup_alpha", "cutmix_alpha"}
        assert space.grid()
    else:
        assert {
            "weight_decay",
            "dropout",
            "aug_strength",
            "mixup_alpha",
            "label_smoothing",
        } <= searched


def test_digits_file_spells_out_the_builtin_default() -> None:
    (digits,) = [p for p in STUDIES if p.name == "digits.yaml"]
    assert load_config(digits) == load_config()
