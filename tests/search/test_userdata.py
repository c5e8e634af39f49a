"""A user's data set by import path (`dataset.name: package.module:loader`): the module is
written into tmp_path and imported from `dataset.path`, as a study file's neighbour would be."""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from search.config.schema import DatasetConfig
from search.core.errors import UserError
from search.data.dataset import load_dataset
from tests.helpers import regsearch

Write = Callable[[str], str]


@pytest.fixture
def loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Write]:
    """Writes a module of `body` into tmp_path/code; returns its name. Each test's module has
    its own name and leaves sys.path and sys.modules as they were."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    module = "user_data_" + re.sub(r"\W", "_", tmp_path.name)
    folder = tmp_path / "code"
    folder.mkdir()

    def write(body: str) -> str:
        header = "import numpy as np\nimport torch\n\n"
        (folder / f"{module}.py").write_text(header + textwrap.dedent(body))
        return module

    yield write
    sys.modules.pop(module, None)


def _cfg(module: str, fn: str = "load", **kwargs: object) -> DatasetConfig:
    path = kwargs.pop("path", None)
    return DatasetConfig(name=f"{module}:{fn}", **kwargs).model_copy(update={"path": path})


TEN_EACH = """
def images(shape=(30, 8, 8)):
    x = np.zeros(shape, dtype=np.uint8)
    x.reshape(len(x), -1)[:, 0] = np.arange(len(x))  # the first pixel holds the image's id
    return x

LABELS = np.arange(30) % 3
CLASSES = ["ant", "bee", "cat"]
"""


def test_a_loader_by_import_path_is_read_from_dataset_path(tmp_path: Path, loader: Write) -> None:
    (tmp_path / "data").mkdir()
    module = loader(
        TEN_EACH
        + """
def load(root):
    assert root.name == "data"
    return images(), LABELS, CLASSES
"""
    )
    cfg = _cfg(module, root=tmp_path / "data", path=tmp_path / "code")
    data = load_dataset(cfg)
    assert data.name == f"{module}:load"
    assert data.classes == ("ant", "bee", "cat")
    assert data.shape == (1, 8, 8)
    assert data.max_value == 255.0
    assert data.allow_flip is False  # unless dataset.flip: true
    assert load_dataset(cfg.model_copy(update={"flip": True})).allow_flip is True
    assert len(data.train) + len(data.val) + len(data.test) == 30
    for split in (data.train, data.val, data.test):  # the labels stay with their images
        ids = split.x[:, 0, 0, 0].long()
        assert split.y.tolist() == (ids % 3).tolist()
    assert sorted(data.val.y.tolist()) == [0, 0, 1, 1, 2, 2]  # stratified


@pytest.mark.parametrize(
    ("made", "channels"),
    [
        ("images((30, 8, 8))", 1),  # N×H×W
        ("images((30, 8, 8, 3))", 3),  # N×H×W×C
        ("images((30, 8, 8, 1))", 1),
        ("images((30, 3, 8, 8))", 3),  # N×C×H×W
        ("torch.from_numpy(images((30, 3, 8, 8)))", 3),  # a tensor
    ],
)
def test_the_three_array_layouts(loader: Write, tmp_path: Path, made: str, channels: int) -> None:
    module = loader(TEN_EACH + f"\ndef load():\n    return {made}, LABELS, CLASSES\n")
    data = load_dataset(_cfg(module, path=tmp_path / "code"))
    assert data.shape == (channels, 8, 8)
    assert data.train.x.is_contiguous()
    ids = data.train.x[:, 0, 0, 0].long()
    assert data.train.y.tolist() == (ids % 3).tolist()  # the id pixel is still (0, 0, 0)


def test_a_mapping_a_root_by_kwargs_and_no_root(loader: Write, tmp_path: Path) -> None:
    module = loader(
        TEN_EACH
        + """
def by_kwargs(**kwargs):
    assert list(kwargs) == ["root"]
    return {"images": images(), "labels": LABELS.tolist(), "classes": tuple(CLASSES)}

def optional_root(root=None):
    assert root is None
    return images(), torch.from_numpy(LABELS), CLASSES
"""
    )
    folder = tmp_path / "code"
    assert load_dataset(_cfg(module, "by_kwargs", root=tmp_path, path=folder)).num_classes == 3
    assert load_dataset(_cfg(module, "optional_root", path=folder)).num_classes == 3


REFUSALS = [
    ("raise TypeError('boom')", "failed: TypeError: boom"),
    ("return images(), LABELS", "returned a 2-tuple; expected (images, labels, class_names)"),
    ("return [images(), LABELS, CLASSES]", "returned list; expected (images, labels, class_names)"),
    ("return {'images': images(), 'labels': LABELS}", "returned a mapping without classes"),
    (
        "return images().tolist(), LABELS, CLASSES",
        "returned images as list; expected a numpy array or tensor",
    ),
    (
        "return images().astype(np.float32), LABELS, CLASSES",
        "returned images of dtype float32; expected uint8 (0..255)",
    ),
    (
        "return images((30, 64)), LABELS, CLASSES",
        "returned images of shape 30×64; expected N×H×W, N×H×W×C or N×C×H×W",
    ),
    (
        "return images((30, 5, 8, 2)), LABELS, CLASSES",
        "returned images of shape 30×5×8×2; neither N×H×W×C nor N×C×H×W with C 1 or 3",
    ),
    ("return images(), LABELS[:29], CLASSES", "returned 29 labels for 30 images"),
    (
        "return images(), LABELS + 0.5, CLASSES",
        "returned labels of dtype float64 and shape (30,); expected N integers",
    ),
    (
        "return images(), LABELS + 1, CLASSES",
        "returned labels 1..3 for 3 class names; labels must lie in 0..2",
    ),
    ("return images(), LABELS, 'abc'", "returned class names as str; expected K strings"),
    ("return images(), LABELS, ['a', 'b', 3]", "returned a class name 3 that is not a string"),
]


@pytest.mark.parametrize(("body", "detail"), REFUSALS)
def test_what_a_loader_returns_is_checked(
    loader: Write, tmp_path: Path, body: str, detail: str
) -> None:
    module = loader(TEN_EACH + f"\ndef load():\n    {body}\n")
    with pytest.raises(UserError) as e:
        load_dataset(_cfg(module, path=tmp_path / "code"))
    assert str(e.value) == f"dataset.name: loader '{module}:load' {detail}"


def test_images_that_are_not_square_or_too_small_are_refused(loader: Write, tmp_path: Path) -> None:
    module = loader(
        TEN_EACH
        + "\ndef wide():\n    return images((30, 8, 12)), LABELS, CLASSES\n"
        + "\ndef tiny():\n    return images((30, 3, 3)), LABELS, CLASSES\n"
    )
    for fn, shape in (("wide", "12×8"), ("tiny", "3×3")):
        with pytest.raises(UserError) as e:
            load_dataset(_cfg(module, fn, path=tmp_path / "code"))
        assert str(e.value) == (
            f"dataset '{module}:{fn}': images of {shape} pixels; images must be square, 4 to "
            "1024 pixels a side"
        )


def test_a_module_that_is_not_there(tmp_path: Path) -> None:
    cfg = _cfg("no_such_module_here", path=tmp_path)
    with pytest.raises(UserError, match=r"^dataset\.name: cannot import 'no_such_module_here'"):
        load_dataset(cfg)


@pytest.mark.slow
def test_a_study_file_beside_its_loader_runs_and_stores_the_size(tmp_path: Path) -> None:
    """As a user: `dataset.name: my_data:load` next to the study file, no dataset.path."""
    (tmp_path / "my_data.py").write_text(
        "import numpy as np\n\n\ndef load():\n"
        "    rng = np.random.default_rng(0)\n"
        "    y = np.arange(60) % 3\n"
        "    x = (rng.random((60, 12, 12)) * 80 + y[:, None, None] * 80).astype(np.uint8)\n"
        "    return x, y, ['a', 'b', 'c']\n"
    )
    (tmp_path / "study.yaml").write_text(
        "study: mine\ndataset: {name: 'my_data:load'}\ntrain: {epochs: 1}\n"
        "tracking: {enabled: false}\n"
    )
    proc = regsearch("run", "study.yaml", "--n-trials", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "mine: image size 12 (auto: my_data:load images are 12×12)" in proc.stderr
    (tmp_path / "my_data.py").write_text("def load():\n    return 1, 2, 3\n")
    (tmp_path / "study.yaml").write_text(
        "study: other\ndataset: {name: 'my_data:load'}\ntracking: {enabled: false}\n"
    )
    proc = regsearch("run", "study.yaml", "--n-trials", "1", cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "dataset.name: loader 'my_data:load' returned images as int; expected a numpy array or "
            "tensor"
        )
    )


def test_class_names_as_a_numpy_array_are_plain_strings(tmp_path: Path, loader: Write) -> None:
    """numpy's `str_` names passed the check, then failed the model's registration (YAML
    cannot write them) with a traceback after the first trial."""
    module = loader(
        TEN_EACH
        + """
def load():
    return images(), LABELS, np.array(CLASSES)

def twice():
    return images(), LABELS, ["ant", "ant", "cat"]
"""
    )
    data = load_dataset(_cfg(module, path=tmp_path / "code"))
    assert data.classes == ("ant", "bee", "cat")
    assert all(type(c) is str for c in data.classes)
    with pytest.raises(UserError, match="class name 'ant' twice"):
        load_dataset(_cfg(module, "twice", path=tmp_path / "code"))


def test_image_size_is_refused_where_the_loader_does_not_resize(
    tmp_path: Path, loader: Write
) -> None:
    module = loader(TEN_EACH + "\ndef load():\n    return images(), LABELS, CLASSES\n")
    cfg = _cfg(module, path=tmp_path / "code", image_size=16)
    with pytest.raises(UserError, match=r"^dataset.image_size: 16, but .* images are 8×8"):
        load_dataset(cfg)
    assert load_dataset(cfg.model_copy(update={"image_size": 8})).shape == (1, 8, 8)  # as stored
