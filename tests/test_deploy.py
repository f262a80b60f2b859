"""Deployment: peak activation memory, MCU fit, the C array, and the TFLite / ExecuTorch exporters."""
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from tinykd.deploy.carray import write_c_array
from tinykd.deploy.mcu import (BOARDS, KB, MB, TFLM_FLASH_BYTES, TFLM_SRAM_BYTES, Board, fit_check, get_board,
                               require_fit)
from tinykd.errors import TinyKDError
from tinykd.measure.memory import activation_traffic, peak_activation_memory
from tinykd.models import create_model



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Exports and the small training run are quicker on one thread on a shared 2-core machine."""
    from tinykd.measure.latency import torch_threads

    with torch_threads(1):
        yield


# ---------------------------------------------------------------- peak activation memory


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _init(name, shape):
    values = np.random.default_rng(len(name)).standard_normal(int(np.prod(shape))).astype(np.float32) * 0.3
    return helper.make_tensor(name, TensorProto.FLOAT, shape, values)


def chain_model(batch="N"):
    """x 1x1x8x8 -> Conv(4, 3x3, pad 1) -> Relu -> MaxPool 2x2 -> Flatten -> Gemm(10)."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
             helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fw", "fb"], ["y"], transB=1, name="fc")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
                  [_init("w", [4, 1, 3, 3]), _init("b", [4]), _init("fw", [10, 64]), _init("fb", [10])])


def test_peak_memory_of_a_chain_matches_a_hand_count():
    # fp32 bytes: x 1*1*8*8*4 = 256, conv = relu = 4*8*8*4 = 1024, pool = flat = 4*4*4*4 = 256, y = 40.
    # Steps as written: conv x+conv = 1280, relu conv+relu = 2048, pool relu+pool = 1280,
    # flatten pool+flat = 512, fc flat+y = 296.
    r = peak_activation_memory(chain_model(), fuse_activations=False)
    assert r.per_step == [1280, 2048, 1280, 512, 296]
    assert (r.peak_bytes, r.op_type, r.tensors) == (2048, "Relu", {"conv": 1024, "relu": 1024})
    assert peak_activation_memory(chain_model(), activation_bytes=1, fuse_activations=False).peak_bytes == 512
    # Relu fused into the Conv (as TFLite does): conv writes one 1024-byte buffer, read by the pool.
    fused = peak_activation_memory(chain_model())
    assert fused.per_step == [1280, 1280, 512, 296]
    assert fused.peak_bytes == 1280
    # A static batch and a batch of 2 scale as expected.
    assert peak_activation_memory(chain_model(batch=1), fuse_activations=False).peak_bytes == 2048
    assert peak_activation_memory(chain_model(), batch=2, fuse_activations=False).peak_bytes == 4096


def test_traffic_counts_each_write_once_and_each_read_per_consumer():
    t = activation_traffic(chain_model(), fuse_activations=False)
    assert t["weight_bytes"] == (36 + 4 + 640 + 10) * 4
    assert t["activation_write_bytes"] == 256 + 1024 + 1024 + 256 + 256 + 40
    assert t["activation_read_bytes"] == 256 + 1024 + 1024 + 256 + 256  # y is read by nobody in the graph


def residual_model():
    """x 1x4x4x4 -> Conv(8) a -> Relu b -> Conv(4) c -> Add(x, c): x stays live across the branch."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["x", "c"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
                  [_init("w1", [8, 4, 3, 3]), _init("w2", [4, 8, 3, 3])])


def test_a_residual_input_stays_live_until_the_add():
    # fp32: x = c = y = 64 elements = 256 B; a = b = 128 elements = 512 B.
    # conv1 x+a = 768; relu x+a+b = 1280; conv2 x+b+c = 1024; add x+c+y = 768.
    r = peak_activation_memory(residual_model(), fuse_activations=False)
    assert r.per_step == [768, 1280, 1024, 768]
    assert r.tensors == {"x": 256, "a": 512, "b": 512}
    # Fused, the Relu writes into a's buffer: conv1 x+a = 768, conv2 x+a+c = 1024, add 768.
    assert peak_activation_memory(residual_model()).per_step == [768, 1024, 768]


def test_qdq_graph_costs_the_same_as_its_int8_deployment(tmp_path):
    from tinykd.compress.quantize import quantize_onnx_static

    fp32 = tmp_path / "m.onnx"
    onnx.save(chain_model(), fp32)
    int8 = quantize_onnx_static(fp32, tmp_path / "m.int8.onnx", np.random.rand(16, 1, 8, 8).astype(np.float32))
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(int8).graph.node)
    # One byte per element with the Relu fused: x + conv = 64 + 256 at the conv, conv + pool = 256 + 64 at the pool.
    assert peak_activation_memory(fp32, activation_bytes=1).per_step == [320, 320, 128, 74]
    assert peak_activation_memory(int8).per_step == [320, 320, 128, 74]
    assert activation_traffic(int8)["weight_bytes"] < activation_traffic(fp32)["weight_bytes"] / 2


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter is deprecated
def test_memory_of_an_exported_model_with_a_dynamic_batch(tmp_path):
    model = create_model("cnn", num_classes=10, in_shape=(1, 16, 16), widths=[4, 8], hidden=16).eval()
    path = tmp_path / "m.onnx"
    # The TorchScript exporter (export_onnx's fallback) is the quick one; it also folds BN into the conv.
    torch.onnx.export(model, (torch.zeros(2, 1, 16, 16),), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    assert onnx.load(path).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # The first conv (BN folded, ReLU fused) writes 4x16x16 that the pool reads into 4x8x8.
    expected = 4 * 16 * 16 + 4 * 8 * 8
    assert peak_activation_memory(path).peak_bytes == 4 * expected
    assert peak_activation_memory(path, activation_bytes=1).peak_bytes == expected


def test_memory_errors_say_what_to_do(tmp_path):
    with pytest.raises(TinyKDError, match="not found") as err:
        peak_activation_memory(tmp_path / "missing.onnx")
    assert "export" in err.value.fix
    seq = _model([helper.make_node("Relu", ["x"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T"])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T"])])
    with pytest.raises(TinyKDError, match="symbolic"):
        peak_activation_memory(seq)
    with pytest.raises(TinyKDError, match="activation_bytes"):
        peak_activation_memory(chain_model(), activation_bytes=0)


# ---------------------------------------------------------------- MCU boards and fit


def test_board_profiles():
    nano = get_board("Arduino Nano 33 BLE Sense")
    assert (nano.flash_bytes, nano.sram_bytes, nano.clock_mhz, nano.core) == (MB, 256 * KB, 64, "Cortex-M4F")
    assert get_board("STM32F746").sram_bytes == 320 * KB
    assert get_board("stm32h743").sram_bytes == 512 * KB  # the largest contiguous block of its 1 MB
    assert get_board("Raspberry Pi Pico").sram_bytes == 264 * KB
    assert get_board("esp32").flash_bytes == 4 * MB
    assert set(BOARDS) == {"nano33ble", "stm32f746", "stm32h743", "esp32", "pico"}
    with pytest.raises(TinyKDError, match="unknown board 'stm32f764'") as err:
        get_board("stm32f764")
    assert "did you mean 'stm32f746'" in err.value.fix


def test_user_defined_board_from_a_dict():
    b = get_board({"name": "tiny", "flash_kb": 128, "sram_kb": 32, "clock_mhz": 48, "energy": {"mac_pj": 1.0}})
    assert b == Board("tiny", 128 * KB, 32 * KB, 48.0, "unknown", {"mac_pj": 1.0})
    assert get_board({"name": "b", "flash_bytes": 1000, "sram_bytes": 100}).sram_bytes == 100
    with pytest.raises(TinyKDError, match="unknown board field"):
        get_board({"name": "x", "flash_kb": 1, "sram_kb": 1, "ram_kb": 1})
    with pytest.raises(TinyKDError, match="no sram size") as err:
        get_board({"name": "x", "flash_kb": 1})
    assert "sram_kb" in err.value.fix
    with pytest.raises(TinyKDError, match="positive"):
        get_board({"name": "x", "flash_kb": "big", "sram_kb": 1})


def test_fit_check_margins():
    fit = fit_check(100 * KB, 40 * KB, "nano33ble")
    assert fit.fits and fit.fits_flash and fit.fits_sram
    assert fit.flash_needed == 100 * KB + TFLM_FLASH_BYTES
    assert fit.flash_margin == MB - 100 * KB - TFLM_FLASH_BYTES
    assert fit.sram_margin == 256 * KB - 40 * KB - TFLM_SRAM_BYTES
    assert fit.summary().startswith("nano33ble: fits")
    tight = fit_check(0, 256 * KB, "nano33ble", runtime_flash_bytes=0, runtime_sram_bytes=0)
    assert tight.fits and tight.sram_margin == 0
    over = fit_check(0, 256 * KB + 1, "nano33ble", runtime_sram_bytes=0)
    assert not over.fits and over.fits_flash and over.sram_margin == -1
    assert over.as_dict()["fits"] is False


def test_require_fit_names_the_numbers_and_a_fix():
    assert require_fit(10 * KB, 10 * KB, "pico").fits
    with pytest.raises(TinyKDError) as err:
        require_fit(1000 * KB, 300 * KB, "nano33ble")
    what = err.value.what
    assert "does not fit nano33ble" in what
    assert "flash needs 1064.0 KB" in what and "over by 40.0 KB" in what
    assert "SRAM needs 316.0 KB" in what and "over by 60.0 KB" in what
    assert "int8" in err.value.fix and "stm32h743" in err.value.fix and "esp32" in err.value.fix


# ---------------------------------------------------------------- C array


def test_c_array_round_trips_the_exact_bytes(tmp_path):
    data = bytes(range(256)) + b"TFL3" + bytes(7)
    src = tmp_path / "model.tflite"
    src.write_bytes(data)
    header = write_c_array(src, tmp_path / "model_data.h", "g_model")
    text = header.read_text()
    assert "alignas(16) const unsigned char g_model[] = {" in text
    assert f"const unsigned int g_model_len = {len(data)};" in text
    body = text.split("g_model[] = {", 1)[1].split("};", 1)[0]
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body)) == data
    with pytest.raises(TinyKDError, match="not a valid C identifier"):
        write_c_array(src, tmp_path / "x.h", "2model")
    with pytest.raises(TinyKDError, match="not found"):
        write_c_array(tmp_path / "none.tflite", tmp_path / "x.h")


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler")
def test_c_array_compiles_and_is_aligned(tmp_path):
    data = bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8))
    (tmp_path / "m.bin").write_bytes(data)
    write_c_array(tmp_path / "m.bin", tmp_path / "m.h", "g_model")
    (tmp_path / "main.cc").write_text(
        '#include <cstdio>\n#include <cstdint>\n#include "m.h"\nint main() {\n'
        '  if (reinterpret_cast<std::uintptr_t>(g_model) % 16) return 3;\n'
        '  std::fwrite(g_model, 1, g_model_len, stdout);\n  return 0;\n}\n')
    subprocess.run(["g++", "-std=c++11", "-o", str(tmp_path / "main"), str(tmp_path / "main.cc")], check=True)
    assert subprocess.run([str(tmp_path / "main")], capture_output=True, check=True).stdout == data


# ---------------------------------------------------------------- TFLite and ExecuTorch


@pytest.fixture(scope="module")
def digits_model():
    """A small CNN trained for a few seconds on scikit-learn's 8x8 digits, and held-out inputs."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data.reshape(-1, 1, 8, 8) / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    model = create_model("cnn", num_classes=10, in_shape=(1, 8, 8), widths=[8, 16], hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:1200]), y[:1200]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(x[1200:]).argmax(1) == y[1200:]).float().mean() > 0.85
    return model, x[:1200], x[1200:1400]


def test_tflite_fp32_and_int8_match_pytorch(digits_model, tmp_path):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    from tinykd.deploy.tflite import export_tflite, tflite_predict

    model, train_x, test_x = digits_model
    with torch.no_grad():
        ref = model(test_x).numpy()
    fp32 = export_tflite(model, (1, 8, 8), tmp_path / "m.tflite")
    np.testing.assert_allclose(tflite_predict(fp32, test_x), ref, atol=1e-4)
    int8 = export_tflite(model, (1, 8, 8), tmp_path / "m.int8.tflite", int8=True, calib=train_x[:200])
    assert int8.stat().st_size < fp32.stat().st_size
    out = tflite_predict(int8, test_x.numpy())
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert not model.training
    # The C array of a real flatbuffer carries the TFL3 identifier at bytes 4..8.
    header = write_c_array(int8, tmp_path / "model_data.h", "g_model").read_text()
    assert "0x54, 0x46, 0x4c, 0x33" in header


def test_tflite_errors(tmp_path):
    pytest.importorskip("litert_torch")
    from tinykd.deploy import tflite

    model = create_model("mlp", num_classes=3, in_shape=(4,), hidden=[8])
    with pytest.raises(TinyKDError, match="calibration") as err:
        tflite.export_tflite(model, (4,), tmp_path / "m.tflite", int8=True)
    assert "calib=" in err.value.fix
    with pytest.raises(TinyKDError, match="not found"):
        tflite.tflite_predict(tmp_path / "none.tflite", np.zeros((1, 4)))


def test_missing_tflite_extra_names_the_install_command(tmp_path, monkeypatch):
    from tinykd.deploy import tflite

    monkeypatch.setitem(sys.modules, "litert_torch", None)  # makes `import litert_torch` raise ImportError
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    model = create_model("mlp", num_classes=3, in_shape=(4,), hidden=[8])
    with pytest.raises(TinyKDError, match="needs the tflite extra") as err:
        tflite.export_tflite(model, (4,), tmp_path / "m.tflite")
    assert err.value.fix == "pip install 'tinykd[tflite]'"
    with pytest.raises(TinyKDError, match="needs the tflite extra"):
        tflite.tflite_predict(tmp_path / "m.tflite", np.zeros((1, 4)))


def test_executorch_pte_matches_pytorch(digits_model, tmp_path):
    pytest.importorskip("executorch.runtime")
    from tinykd.deploy.executorch import export_pte, pte_predict

    model, _, test_x = digits_model
    path = export_pte(model, (1, 8, 8), tmp_path / "m.pte")
    with torch.no_grad():
        ref = model(test_x[:50]).numpy()
    np.testing.assert_allclose(pte_predict(path, test_x[:50]), ref, atol=1e-4)
    with pytest.raises(TinyKDError, match="shape"):
        pte_predict(path, np.zeros((1, 1, 4, 4), np.float32))


def test_missing_executorch_extra_names_the_install_command(tmp_path, monkeypatch):
    from tinykd.deploy import executorch

    monkeypatch.setitem(sys.modules, "executorch.exir", None)
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)
    model = create_model("mlp", num_classes=3, in_shape=(4,), hidden=[8])
    with pytest.raises(TinyKDError, match="needs the executorch extra") as err:
        executorch.export_pte(model, (4,), tmp_path / "m.pte")
    assert err.value.fix == "pip install 'tinykd[executorch]'"
    with pytest.raises(TinyKDError, match="needs the executorch extra"):
        executorch.pte_predict(tmp_path / "m.pte", np.zeros((1, 4)))


def test_tflite_and_pte_latency_harness(tmp_path):
    """Batch-1 timings of each exported runtime come from the same harness (median ≤ p90, positive)."""
    pytest.importorskip("litert_torch")
    pytest.importorskip("executorch")
    from tinykd.deploy.executorch import export_pte, pte_latency
    from tinykd.deploy.tflite import export_tflite, tflite_latency
    from tinykd.models import create_model

    model = create_model("cnn", num_classes=10, in_shape=(1, 8, 8), widths=[4, 8], hidden=16).eval()
    tfl = export_tflite(model, (1, 8, 8), tmp_path / "m.tflite")
    pte = export_pte(model, (1, 8, 8), tmp_path / "m.pte")
    for lat in (tflite_latency(tfl, warmup=2, repeats=5), pte_latency(pte, (1, 8, 8), warmup=2, repeats=5)):
        assert 0 < lat["b1"]["median_ms"] <= lat["b1"]["p90_ms"]
