"""tinykd.models: every registered model builds, has the parameter count its paper implies,
rejects bad arguments with a helpful TinyKDError, and exports to ONNX that matches PyTorch."""
from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tinykd.errors import TinyKDError
from tinykd.models import count_params, create_model, list_models, register_model
from tinykd.models import registry

# A small input each model is meant for; the rest get a 1-channel 28x28 image.
IN_SHAPES = {"dscnn": (1, 40, 63), "dscnn_small": (1, 40, 63), "cnn1d": (1, 40)}
FAMILIES = {"mlp", "cnn", "resnet", "dscnn", "cnn1d"}


def in_shape_for(name: str) -> tuple[int, ...]:
    return IN_SHAPES.get(name, (1, 28, 28))


def calibrate_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set BatchNorm running stats to those of ``x`` and switch to eval.

    At initialisation the running stats are (0, 1) and PyTorch's default init shrinks the signal
    layer by layer, so an untrained deep model in eval mode outputs roughly its fc bias whatever
    the input; with calibrated stats the logits depend on the input and comparisons mean something.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def test_registry_lists_every_family_with_descriptions():
    models = list_models()
    assert FAMILIES | {"resnet8", "resnet20", "resnet32", "resnet56", "dscnn_small"} <= set(models)
    assert list(models) == sorted(models)
    assert all(models.values()), "every model has a description"


# models of image/signal inputs; the token-id models (they take a vocab_size) are tested in test_text_models.py
DENSE = sorted(n for n in list_models() if not registry.accepts(n, "vocab_size"))


@pytest.mark.parametrize("name", DENSE)
def test_output_shape_and_eval_is_deterministic(name):
    torch.manual_seed(0)
    shape = in_shape_for(name)
    model = create_model(name, num_classes=7, in_shape=shape).eval()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (3, 7)
        assert torch.isfinite(y).all()
        assert torch.equal(y, model(x))


@pytest.mark.parametrize("name, shape", [
    ("resnet8", (3, 32, 32)),    # CIFAR
    ("resnet8", (1, 7, 5)),      # odd, tiny: stride-2 convs with padding never reach zero
    ("cnn", (3, 32, 32)),
    ("cnn", (1, 8, 8)),          # sklearn digits
    ("dscnn", (1, 40, 32)),      # the smallest KWS input we promise
    ("dscnn", (1, 49, 10)),      # Hello Edge / MLPerf Tiny MFCCs (time, frequency)
    ("cnn1d", (2, 100)),
    ("mlp", (64,)),              # tabular
    ("mlp", (1, 40, 63)),
])
def test_other_input_shapes(name, shape):
    model = create_model(name, num_classes=4, in_shape=shape).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 4)


def test_param_count_hinton_mlp():
    model = create_model("mlp", num_classes=10, in_shape=(1, 28, 28), hidden=[1200, 1200], dropout=0.5)
    assert count_params(model) == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10  # 2,395,210
    teacher = create_model("mlp_1200x2", num_classes=10, in_shape=(1, 28, 28))
    assert count_params(teacher) == count_params(model)
    assert teacher.layers[0].drop.p == 0.5


def resnet_params(c_in: int, n: int, num_classes: int) -> int:
    """Hand count for a CIFAR ResNet with projection shortcuts; BN adds 2 params per channel."""
    conv = lambda a, b, k: a * b * k * k  # noqa: E731
    total = conv(c_in, 16, 3) + 2 * 16                                  # conv1, bn1
    for c_prev, c in [(16, 16), (16, 32), (32, 64)]:
        first = conv(c_prev, c, 3) + conv(c, c, 3) + 4 * c              # block 0: two convs + two BNs
        if c_prev != c:
            first += conv(c_prev, c, 1) + 2 * c                         # 1x1 projection + BN
        total += first + (n - 1) * (2 * conv(c, c, 3) + 4 * c)
    return total + 64 * num_classes + num_classes                       # fc


def test_param_count_resnet():
    assert resnet_params(3, 3, 10) == 272_474  # the paper's "0.27M" for ResNet-20 on CIFAR-10
    for name, n in [("resnet8", 1), ("resnet20", 3), ("resnet56", 9)]:
        assert count_params(create_model(name, num_classes=10, in_shape=(3, 32, 32))) == resnet_params(3, n, 10)
    assert count_params(create_model("resnet20", num_classes=10, in_shape=(1, 28, 28))) == 272_186
    assert count_params(create_model("resnet", num_classes=10, in_shape=(1, 28, 28), depth=32)) == \
        resnet_params(1, 5, 10)
    # Width 2 doubles every channel count, so conv weights grow ~4x.
    wide = count_params(create_model("resnet8", num_classes=10, in_shape=(3, 32, 32), width=2))
    assert 3.5 * resnet_params(3, 1, 10) < wide < 4 * resnet_params(3, 1, 10)


def test_param_count_cnn_dscnn_cnn1d():
    cnn = create_model("cnn", num_classes=10, in_shape=(1, 28, 28))
    assert count_params(cnn) == (1 * 32 * 9 + 2 * 32) + (32 * 64 * 9 + 2 * 64) \
        + (64 * 7 * 7 * 128 + 128) + (128 * 10 + 10)
    no_hidden = create_model("cnn", num_classes=10, in_shape=(1, 28, 28), hidden=0, convs_per_stage=2)
    assert count_params(no_hidden) == (9 * 32 + 64 + 9 * 32 * 32 + 64) + (9 * 32 * 64 + 128 + 9 * 64 * 64 + 128) \
        + (64 * 7 * 7 * 10 + 10)
    block = 64 * 9 + 2 * 64 + 64 * 64 + 2 * 64  # depthwise + BN + pointwise + BN
    dscnn = create_model("dscnn", num_classes=12, in_shape=(1, 49, 10))
    assert count_params(dscnn) == 10 * 4 * 64 + 2 * 64 + 4 * block + 64 * 12 + 12
    cnn1d = create_model("cnn1d", num_classes=10, in_shape=(1, 40))  # length 40 -> 20 -> 10 -> 5
    assert count_params(cnn1d) == (5 * 32 + 64) + 2 * (32 * 32 * 5 + 64) + 32 * 5 * 10 + 10


def test_readable_module_paths():
    paths = lambda name, shape, **kw: set(dict(  # noqa: E731
        create_model(name, num_classes=3, in_shape=shape, **kw).named_modules()))
    assert {"features.0.conv", "features.0.bn", "features.1.pool", "head.fc1", "head.fc"} <= paths("cnn", (1, 28, 28))
    assert {"features.0.conv1", "features.0.conv2"} <= paths("cnn", (1, 28, 28), convs_per_stage=2)
    assert {"conv1", "layer1.0.conv1", "layer2.0.shortcut.conv", "layer3.2.bn2", "fc"} <= paths("resnet20", (3, 32, 32))
    assert {"conv1", "blocks.3.dw_conv", "blocks.3.pw_bn", "fc"} <= paths("dscnn", (1, 40, 63))
    assert {"features.2.conv", "head.fc"} <= paths("cnn1d", (1, 40))
    assert {"layers.1.fc", "fc"} <= paths("mlp", (64,))


def test_unknown_model_suggests_closest():
    with pytest.raises(TinyKDError) as err:
        create_model("resnt20", num_classes=10, in_shape=(1, 28, 28))
    msg = str(err.value)
    assert "unknown model 'resnt20'" in msg and "did you mean 'resnet20'" in msg and "dscnn" in msg


def test_unknown_kwarg_names_model_and_valid_arguments():
    with pytest.raises(TinyKDError) as err:
        create_model("cnn", num_classes=10, in_shape=(1, 28, 28), width=[8, 16])
    msg = str(err.value)
    assert "model 'cnn'" in msg and "unknown argument 'width'" in msg
    assert "did you mean 'widths'" in msg and "hidden=128" in msg
    # A variant that fixes an argument points to the family builder that takes it.
    with pytest.raises(TinyKDError, match="models that take 'hidden': cnn, gpt, mlp"):
        create_model("mlp_1200x2", num_classes=10, in_shape=(1, 28, 28), hidden=[10])
    with pytest.raises(TinyKDError, match="did you mean 'depth'"):
        create_model("resnet", num_classes=10, in_shape=(3, 32, 32), dept=20)


@pytest.mark.parametrize("name, kwargs, expected", [
    ("mlp", {"hidden": "256"}, "argument 'hidden' must be a list of positive ints"),
    ("mlp", {"dropout": 1.5}, "argument 'dropout' must be a probability in [0, 1)"),
    ("mlp", {"activation": "swish"}, "argument 'activation' must be one of relu, relu6, gelu, tanh"),
    ("cnn", {"widths": []}, "argument 'widths' must be a non-empty list"),
    ("cnn", {"hidden": -1}, "argument 'hidden' must be an int >= 0"),
    ("resnet", {"depth": 21}, "use depth=20"),
    ("resnet20", {"width": 0}, "argument 'width' must be a number > 0"),
    ("dscnn", {"blocks": 2.5}, "argument 'blocks' must be an int >= 0"),
    ("cnn1d", {"stride": True}, "argument 'stride' must be an int >= 1"),
])
def test_bad_kwarg_values(name, kwargs, expected):
    with pytest.raises(TinyKDError) as err:
        create_model(name, num_classes=10, in_shape=in_shape_for(name), **kwargs)
    msg = str(err.value)
    assert msg.startswith(f"model '{name}': ") and expected in msg and "fix:" in msg


@pytest.mark.parametrize("name, shape, kwargs, expected", [
    ("cnn", (1, 40), {}, "use cnn1d"),
    ("resnet20", (28, 28), {}, "use in_shape (1, H, W)"),
    ("dscnn", (40,), {}, "use cnn1d"),
    ("cnn1d", (1, 28, 28), {}, "use cnn, resnet or dscnn"),
    ("cnn1d", (40,), {}, "use in_shape (1, L)"),
    ("cnn", (1, 3, 5), {}, "use at most 1 stages (len(widths) <= 1)"),
    ("cnn1d", (1, 8), {"pool": 2}, "too short for 3 stages of stride 2 and pool 2"),
    ("dscnn", (1, 1, 40), {}, "too small for the stride-2 first conv"),
    ("mlp", (0, 28), {}, "in_shape must be a non-empty tuple of positive ints"),
])
def test_bad_in_shape(name, shape, kwargs, expected):
    with pytest.raises(TinyKDError) as err:
        create_model(name, num_classes=10, in_shape=shape, **kwargs)
    msg = str(err.value)
    assert f"model '{name}'" in msg and expected in msg and "fix:" in msg


def test_bad_num_classes():
    with pytest.raises(TinyKDError, match="num_classes must be a positive int"):
        create_model("mlp", num_classes=0, in_shape=(64,))


def test_register_model(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("linear_test", "a linear classifier")
    def linear_test(*, num_classes: int, in_shape: tuple[int, ...], bias: bool = True) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(in_shape)), num_classes, bias=bias))

    assert list_models()["linear_test"] == "a linear classifier"
    assert count_params(create_model("linear_test", num_classes=3, in_shape=(4,), bias=False)) == 12
    with pytest.raises(ValueError, match="registered twice"):
        register_model("linear_test")(linear_test)
    with pytest.raises(ValueError, match="keyword-only"):
        register_model("no_defaults")(lambda *, num_classes, in_shape, depth: None)


@pytest.mark.parametrize("name, shape", [
    ("mlp", (1, 28, 28)), ("cnn", (1, 28, 28)), ("resnet8", (3, 16, 16)), ("dscnn", (1, 40, 32)), ("cnn1d", (1, 40)),
])
def test_onnx_export_matches_pytorch(name, shape, tmp_path):
    torch.manual_seed(0)
    model = calibrate_bn(create_model(name, num_classes=5, in_shape=shape), torch.randn(16, *shape))
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, *shape),), path, dynamo=True, verbose=False,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, *shape)  # another batch size than the export's: the batch axis is dynamic
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    assert want.std(axis=0).max() > 1e-3, "logits should depend on the input"
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_cnn_quantizes_in_eager_mode():
    """The conv-bn-relu triples fuse by path and the model converts to int8 with torch.ao.quantization."""
    tq = pytest.importorskip("torch.ao.quantization")
    torch.manual_seed(0)
    model = calibrate_bn(create_model("cnn", num_classes=10, in_shape=(1, 28, 28)), torch.randn(16, 1, 28, 28))
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        want = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = tq.fuse_modules(model, [["features.0.conv", "features.0.bn", "features.0.relu"],
                                        ["features.1.conv", "features.1.bn", "features.1.relu"],
                                        ["head.fc1", "head.relu"]])
        quantized = nn.Sequential(tq.QuantStub(), fused, tq.DeQuantStub()).eval()
        quantized.qconfig = tq.get_default_qconfig("fbgemm")
        tq.prepare(quantized, inplace=True)
        with torch.no_grad():
            quantized(torch.randn(64, 1, 28, 28))
        tq.convert(quantized, inplace=True)
        with torch.no_grad():
            got = quantized(x)
    assert got.shape == (8, 10)
    assert (got - want).abs().max() < 0.1 * want.abs().max()
