"""Tests for the models package: shapes, validation, regularization rates, export, state_dict."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from torch import nn

from models import create_model, list_models, register_model
from models._layers import Dropout, DropPath, Normalize, drop_path_rates

ALL_MODELS = ["airbench", "resnet18", "small-cnn", "wrn-16-4"]
SMALL_WIDTH = {"small-cnn": 8, "resnet18": 16, "wrn-16-4": 16, "airbench": 16}


def _small(name: str, **kwargs: Any) -> nn.Module:
    kwargs.setdefault("num_classes", 10)
    kwargs.setdefault("in_channels", 3)
    kwargs.setdefault("width", SMALL_WIDTH[name])
    return create_model(name, **kwargs)


def test_registry_lists_builtin_models() -> None:
    assert list_models() == ALL_MODELS


def test_register_duplicate_name_raises() -> None:
    with pytest.raises(ValueError, match="small-cnn"):
        register_model("small-cnn", lambda **_: nn.Identity(), default_width=1)


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize(("in_channels", "size"), [(3, 32), (1, 8)])
def test_logits_shape(name: str, in_channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = _small(name, num_classes=7, in_channels=in_channels, dropout=0.1, drop_path=0.1)
    x = torch.rand(4, in_channels, size, size)
    for mode in (True, False):
        out = model.train(mode)(x)
        assert out.shape == (4, 7)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_small_cnn_digits_default_width() -> None:
    model = create_model("small-cnn", num_classes=10, in_channels=1)
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)  # any size >= 8


def test_unknown_name_error_names_it_and_lists_known() -> None:
    with pytest.raises(ValueError, match="no-such-net") as exc:
        create_model("no-such-net", num_classes=10, in_channels=3)
    for name in ALL_MODELS:
        assert name in str(exc.value)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"dropout": -0.1}, r"dropout=-0\.1"),
        ({"dropout": 1.0}, r"dropout=1\.0"),
        ({"dropout": math.nan}, r"dropout=nan"),
        ({"drop_path": 1.0}, r"drop_path=1\.0"),
        ({"drop_path": -0.5}, r"drop_path=-0\.5"),
        ({"num_classes": 1}, r"num_classes=1"),
        ({"in_channels": 0}, r"in_channels=0"),
        ({"width": 0}, r"width=0"),
        ({"mean": (0.5, 0.5)}, r"mean"),
        ({"std": (0.2, 0.2)}, r"std"),
        ({"std": (0.2, 0.0, 0.2)}, r"std"),
    ],
)
def test_bad_hyperparameters_raise(kwargs: dict[str, object], pattern: str) -> None:
    args: dict[str, Any] = {"num_classes": 10, "in_channels": 3, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        create_model("small-cnn", **args)


def test_normalize_maps_mean_to_zero() -> None:
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    norm = Normalize(mean, std)
    x = torch.tensor(mean).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert torch.allclose(norm(x), torch.zeros(2, 3, 4, 4), atol=1e-6)
    y = norm(x + torch.tensor(std).view(1, 3, 1, 1))
    assert torch.allclose(y, torch.ones_like(y), atol=1e-6)
    assert set(norm.state_dict()) == {"mean", "std"}
    assert norm.mean.shape == (1, 3, 1, 1)


def test_model_uses_given_and_default_normalization() -> None:
    model = create_model("small-cnn", num_classes=3, in_channels=2, mean=(0.3, 0.4), std=(0.1, 0.2))
    norm = model.normalize
    assert isinstance(norm, Normalize)
    assert torch.allclose(norm.mean.flatten(), torch.tensor([0.3, 0.4]))
    assert torch.allclose(norm.std.flatten(), torch.tensor([0.1, 0.2]))
    default = create_model("small-cnn", num_classes=3, in_channels=2).normalize
    assert isinstance(default, Normalize)
    assert default.mean.flatten().tolist() == [0.5, 0.5]
    assert default.std.flatten().tolist() == [0.25, 0.25]
    with pytest.raises(ValueError, match="input channels"):
        model(torch.rand(1, 3, 8, 8))


def test_drop_path_rates_linear_from_zero() -> None:
    rates = drop_path_rates(0.3, 7)
    assert len(rates) == 7
    assert rates[0] == 0.0
    assert rates[-1] == pytest.approx(0.3)
    diffs = [b - a for a, b in itertools.pairwise(rates)]
    assert all(d == pytest.approx(0.05) for d in diffs)
    assert drop_path_rates(0.2, 1) == [0.2]
    assert drop_path_rates(0.0, 4) == [0.0] * 4
    with pytest.raises(ValueError, match="n_blocks=0"):
        drop_path_rates(0.1, 0)


@pytest.mark.parametrize(
    ("name", "n_blocks"),
    [("small-cnn", 2), ("resnet18", 8), ("wrn-16-4", 6), ("airbench", 3)],
)
def test_models_use_linear_drop_path_schedule(name: str, n_blocks: int) -> None:
    model = _small(name, drop_path=0.4)
    ps = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert ps == pytest.approx(drop_path_rates(0.4, n_blocks))
    rates = [m.rate.item() for m in model.modules() if isinstance(m, DropPath)]
    assert rates == pytest.approx(ps), "the tensor rate a compiled model reads"
    assert not [k for k in model.state_dict() if k.endswith(".rate")], "checkpoints unchanged"


@pytest.fixture(params=[False, True], ids=["eager", "compiled-path"])
def compiled_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both paths of the drop modules: the compiled one (a graph reads the rate as a tensor,
    taken here by making `is_compiling` say so) must drop like the eager one."""
    if request.param:
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    return bool(request.param)


def test_stochastic_depth_drops_rows_at_rate_in_train_and_is_identity_in_eval(
    compiled_path: bool,
) -> None:
    torch.manual_seed(1234)
    model = _small("small-cnn", in_channels=1, drop_path=0.5)
    sd = [m for m in model.modules() if isinstance(m, DropPath)][-1]
    assert sd.p == 0.5  # the last block gets the full rate

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    sd.register_forward_hook(lambda _m, inp, out: seen.append((inp[0].detach(), out.detach())))

    model.train()
    n = 4000
    model(torch.rand(n, 1, 8, 8))
    branch, out = seen[-1]
    assert (branch.flatten(1) != 0).any(dim=1).all()  # the branch itself is never all-zero
    dropped = (out.flatten(1) == 0).all(dim=1)
    assert abs(dropped.float().mean().item() - 0.5) < 0.05
    kept = ~dropped  # survivors are rescaled by 1 / (1 - p)
    assert torch.allclose(out[kept], branch[kept] * 2.0, rtol=1e-5, atol=1e-6)

    model.eval()
    x = torch.rand(64, 1, 8, 8)
    y1, y2 = model(x), model(x)
    assert torch.equal(y1, y2)
    branch, out = seen[-1]
    assert torch.equal(branch, out)


def test_classifier_dropout_rate(compiled_path: bool) -> None:
    torch.manual_seed(4321)
    model = _small("small-cnn", in_channels=1, dropout=0.3)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    dropout = model.dropout
    assert isinstance(dropout, Dropout) and dropout.p == 0.3
    dropout.register_forward_hook(lambda _m, inp, out: seen.append((inp[0].detach(), out.detach())))
    model.train()
    model(torch.rand(1024, 1, 8, 8))
    inp, out = seen[-1]
    live = inp != 0
    assert live.sum() > 5000
    frac = ((out == 0) & live).sum().item() / live.sum().item()
    assert abs(frac - 0.3) < 0.03
    kept = out != 0
    assert torch.allclose(out[kept], inp[kept] / 0.7, rtol=1e-5), "survivors scaled 1 / (1 - p)"
    model.eval()
    model(torch.rand(8, 1, 8, 8))
    inp, out = seen[-1]
    assert torch.equal(inp, out)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_dropout_sits_before_classifier(name: str) -> None:
    model = _small(name, dropout=0.25)
    assert isinstance(model.dropout, Dropout) and model.dropout.p == 0.25
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 10


@pytest.mark.parametrize("name", ALL_MODELS)
def test_convs_before_batchnorm_have_no_bias(name: str) -> None:
    model = _small(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is None for c in convs)


@pytest.mark.parametrize(
    ("name", "shape"),
    [("small-cnn", (1, 8, 8)), ("small-cnn", (3, 32, 32)), ("airbench", (3, 32, 32))],
)
def test_torch_export(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = _small(name, in_channels=shape[0], dropout=0.2, drop_path=0.2).eval()
    exported = torch.export.export(model, (torch.rand(2, *shape),))
    x = torch.rand(2, *shape)
    assert torch.allclose(exported.module()(x), model(x), atol=1e-5)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_state_dict_round_trip(name: str) -> None:
    kwargs = {"dropout": 0.2, "drop_path": 0.2, "mean": (0.4, 0.45, 0.5), "std": (0.2, 0.25, 0.3)}
    torch.manual_seed(0)
    src = _small(name, **kwargs).train()
    with torch.no_grad():
        src(torch.rand(8, 3, 16, 16))  # move BN running stats away from their init
    state = src.state_dict()
    assert "normalize.mean" in state and "normalize.std" in state

    torch.manual_seed(1)
    dst = _small(name, **kwargs)
    dst.load_state_dict(state)  # strict: same keys and shapes
    x = torch.rand(4, 3, 16, 16)
    src.eval()
    dst.eval()
    assert torch.equal(src(x), dst(x))
