"""Networks from outside the registry: timm and torchvision by name, a user factory by import
path, and pretrained weights from a file — each behind `create_model`'s keyword contract."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from models import create_model, load_weights, pretrained_stats, read_weights, supported
from models._external import External


def _logits(model: nn.Module, channels: int = 1, size: int = 32) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.rand(2, channels, size, size))


def test_timm_model_takes_the_searched_dropout_and_stochastic_depth() -> None:
    model = create_model(
        "timm/test_resnet", num_classes=3, in_channels=1, dropout=0.3, drop_path=0.2
    )
    assert isinstance(model, External)
    assert _logits(model).shape == (2, 3)
    assert model.net.drop_rate == 0.3  # timm's ResNet: dropout before the head
    rates = [m.drop_prob for m in model.net.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2)  # the deepest block gets the full rate
    assert supported("timm/test_resnet", num_classes=3, in_channels=1) == {"dropout", "drop_path"}


def test_torchvision_resnet18_takes_neither_model_side_regularizer() -> None:
    assert supported("torchvision/resnet18", num_classes=10, in_channels=3) == set()
    with pytest.raises(ValueError, match="torchvision/resnet18 takes no dropout"):
        create_model("torchvision/resnet18", num_classes=10, in_channels=3, dropout=0.2)


def test_torchvision_builder_gets_each_regularizer_under_its_own_name() -> None:
    name = "torchvision/efficientnet_b0"
    assert supported(name, num_classes=4, in_channels=3) == {"dropout", "drop_path"}
    model = create_model(name, num_classes=4, in_channels=3, dropout=0.35, drop_path=0.1)
    assert model.net.classifier[0].p == 0.35
    depth = [m.p for m in model.net.modules() if type(m).__name__ == "StochasticDepth"]
    assert depth and max(depth) <= 0.1 and max(depth) > 0.05


def test_grey_images_feed_a_three_channel_torchvision_network() -> None:
    model = create_model(
        "torchvision/resnet18", num_classes=5, in_channels=1, mean=[0.3], std=[0.2]
    )
    assert _logits(model, channels=1).shape == (2, 5)
    assert model.normalize.mean.flatten().tolist() == pytest.approx([0.3] * 3)


def test_a_vision_transformer_is_built_for_the_data_s_image_size() -> None:
    model = create_model("timm/test_vit", num_classes=3, in_channels=3, image_size=32)
    assert _logits(model, channels=3, size=32).shape == (2, 3)


def _write_factory(folder: Path, body: str, module: str = "userzoo") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(body))
    return module


_FACTORY = """
    from torch import nn

    def small(*, num_classes, in_channels, width=8):
        return nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
        )

    def anything(**kwargs):
        anything.seen = kwargs
        return small(num_classes=kwargs["num_classes"], in_channels=kwargs["in_channels"])
"""


def test_a_user_factory_gets_the_contract_keywords_it_takes(tmp_path: Path) -> None:
    module = _write_factory(tmp_path / "code", _FACTORY, "userzoo_a")
    try:
        name = f"{module}:small"
        assert supported(name, num_classes=3, in_channels=1, folders=[tmp_path / "code"]) == set()
        model = create_model(
            name, num_classes=3, in_channels=1, width=4, path=str(tmp_path / "code")
        )
        assert model.net[0].out_channels == 4
        model = create_model(
            f"{module}:anything",
            num_classes=3,
            in_channels=1,
            dropout=0.1,
            drop_path=0.05,
            image_size=16,
            path=str(tmp_path / "code"),
        )
        seen = sys.modules[module].anything.seen
        assert seen == {
            "num_classes": 3,
            "in_channels": 1,
            "dropout": 0.1,
            "drop_path": 0.05,
            "image_size": 16,
        }
    finally:
        sys.modules.pop(module, None)
        sys.path[:] = [p for p in sys.path if p != str((tmp_path / "code").resolve())]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("timm/resnet_18", "unknown timm model 'resnet_18'; did you mean resnet18"),
        ("torchvision/resnet19", "unknown torchvision classification model 'resnet19'"),
        ("no_such_module_x:build", "cannot import 'no_such_module_x'"),
        ("json:nothing_here", "module 'json' has no 'nothing_here'"),
    ],
)
def test_names_that_cannot_be_built_fail_with_one_line(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as info:
        create_model(name, num_classes=3, in_channels=1)
    assert "\n" not in str(info.value)


def test_without_timm_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm → ImportError
    with pytest.raises(ValueError, match=r"pip install 'regsearch\[timm\]'"):
        create_model("timm/test_resnet", num_classes=3, in_channels=1)


def test_weights_load_with_a_new_head_and_a_grey_first_convolution(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = create_model("timm/test_resnet", num_classes=1000, in_channels=3).net
    saved = {k: v.clone() for k, v in source.state_dict().items()}
    save_file(saved, str(tmp_path / "w.safetensors"))
    # The same weights as torch.save'd by a DataParallel training script.
    torch.save({"state_dict": {f"module.{k}": v for k, v in saved.items()}}, tmp_path / "w.pth")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pth"):
        target = create_model("timm/test_resnet", num_classes=10, in_channels=1).net
        fresh_head = target.fc.weight.clone()
        report = load_weights(target, path)
        assert report.reinitialised == ("fc.weight", "fc.bias")
        assert report.adapted == ("conv1.0.weight",)
        assert torch.equal(target.fc.weight, fresh_head)
        assert torch.equal(target.conv1[0].weight, saved["conv1.0.weight"].sum(1, keepdim=True))
        assert torch.equal(target.layer1[0].conv1.weight, saved["layer1.0.conv1.weight"])
        assert "re-initialised" in report.line(path) and "\n" not in report.line(path)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    torch.save(
        create_model("timm/test_vit", num_classes=3, in_channels=3).net.state_dict(),
        tmp_path / "v.pt",
    )
    with pytest.raises(ValueError, match=r"fits 0 of the network's \d+ tensors"):
        load_weights(
            create_model("timm/test_resnet", num_classes=3, in_channels=3).net, tmp_path / "v.pt"
        )
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"model\.weights: cannot read"):
        read_weights(tmp_path / "junk.pt")


def test_weights_that_lack_much_of_the_network_are_refused(tmp_path: Path) -> None:
    """A related architecture's weights (a deeper network of the same family) fit by name
    where they overlap, but leave the rest random: refused. A file without the classifier
    head alone is taken, and the line names what it lacked."""

    def net(depth: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
        for _ in range(depth):
            layers += [nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()]
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    shallow = net(4).state_dict()  # 4 blocks' weights for an 8-block network
    torch.save(shallow, tmp_path / "shallow.pt")
    with pytest.raises(ValueError, match=r"and lacks \d+ \(first missing: [^)]+\); are they"):
        load_weights(net(8), tmp_path / "shallow.pt")
    headless = {k: v for k, v in net(8).state_dict().items() if not k.startswith("27.")}
    torch.save(headless, tmp_path / "headless.pt")
    report = load_weights(net(8), tmp_path / "headless.pt")
    assert report.absent == ("27.weight", "27.bias")
    assert "27.weight, 27.bias not in the file" in report.line(tmp_path / "headless.pt")


def test_a_network_with_auxiliary_outputs_trains_on_its_main_logits() -> None:
    """torchvision's GoogLeNet returns a named tuple with its auxiliary classifiers in training
    mode: a trial trains on the main logits, and the exported champion returns them too."""
    model = create_model(
        "torchvision/googlenet", num_classes=3, in_channels=3, kwargs={"init_weights": True}
    )
    model.train()
    logits = model(torch.rand(2, 3, 32, 32))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3)
    assert _logits(model, channels=3).shape == (2, 3)


def test_pretrained_statistics_come_from_the_weights_own_config() -> None:
    assert pretrained_stats("torchvision/resnet18") == (
        pytest.approx([0.485, 0.456, 0.406]),
        pytest.approx([0.229, 0.224, 0.225]),
    )
    assert pretrained_stats("timm/test_resnet") == ([0.5] * 3, [0.5] * 3)
    assert pretrained_stats("json:loads") is None
