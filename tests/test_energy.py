"""Energy: the per-operation inference model against hand calculations, and CodeCarbon training tracking."""
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tinykd.deploy.mcu import Board
from tinykd.errors import TinyKDError
from tinykd.measure.energy import (MEMORY_PJ_PER_BYTE, inference_energy, mac_energy_pj, onnx_inference_energy,
                                   track_training)


def test_constants_are_horowitz_isscc_2014():
    # 8-bit multiply 0.2 pJ into a 32-bit add 0.1 pJ; fp32 3.7 + 0.9; fp16 1.1 + 0.4; int32 3.1 + 0.1.
    assert mac_energy_pj("int8") == pytest.approx(0.3)
    assert mac_energy_pj("fp32") == pytest.approx(4.6)
    assert mac_energy_pj("fp16") == pytest.approx(1.5)
    assert mac_energy_pj("int32") == pytest.approx(3.2)
    # 64-bit accesses: 10 / 20 / 100 pJ and 1.3-2.6 nJ, per byte.
    assert MEMORY_PJ_PER_BYTE == pytest.approx({"sram_8kb": 1.25, "sram_32kb": 2.5, "sram_1mb": 12.5,
                                                "dram_low": 162.5, "dram_high": 325.0})


def test_inference_energy_matches_a_hand_calculation():
    e = inference_energy(1000, weight_bytes=500, activation_read_bytes=300, activation_write_bytes=200)
    # 1000 MACs x 0.3 pJ + 500 B x 12.5 pJ + (300 + 200) B x 12.5 pJ
    assert e["compute_pj"] == pytest.approx(300)
    assert e["weight_pj"] == pytest.approx(6250)
    assert e["activation_pj"] == pytest.approx(6250)
    assert e["total_pj"] == pytest.approx(12800)
    assert e["total_uj"] == pytest.approx(0.0128)
    assert e["label"] == "estimate" and "Horowitz" in e["source"] and e["memory"] == "sram_1mb"
    fp32 = inference_energy(1000, weight_bytes=2000, activation_read_bytes=0, activation_write_bytes=0,
                            dtype="fp32", memory="sram_32kb")
    assert fp32["total_pj"] == pytest.approx(1000 * 4.6 + 2000 * 2.5)


def test_board_and_overrides_replace_constants():
    board = Board("lowpower", 1 << 20, 1 << 18, 64, "Cortex-M4F", energy={"mac_pj": 1.0, "weight_pj_per_byte": 2.0})
    e = inference_energy(100, weight_bytes=10, activation_read_bytes=1, activation_write_bytes=1, board=board)
    assert e["total_pj"] == pytest.approx(100 * 1.0 + 10 * 2.0 + 2 * 12.5)
    assert e["board"] == "lowpower" and "board lowpower" in e["source"]
    e = inference_energy(100, weight_bytes=10, activation_read_bytes=1, activation_write_bytes=1, board=board,
                         overrides={"activation_pj_per_byte": 0.5})
    assert e["total_pj"] == pytest.approx(100 + 20 + 1)
    with pytest.raises(TinyKDError, match="unknown energy constant") as err:
        inference_energy(1, weight_bytes=0, activation_read_bytes=0, activation_write_bytes=0, overrides={"mac": 1})
    assert "mac_pj" in err.value.fix
    with pytest.raises(TinyKDError, match="unknown data type 'int4'"):
        inference_energy(1, weight_bytes=0, activation_read_bytes=0, activation_write_bytes=0, dtype="int4")
    with pytest.raises(TinyKDError, match="unknown memory level 'sram_1kb'"):
        inference_energy(1, weight_bytes=0, activation_read_bytes=0, activation_write_bytes=0, memory="sram_1kb")


def test_energy_from_an_onnx_graph(tmp_path):
    """x (4) -> Gemm(3) -> Relu -> Gemm(2): 12 + 6 MACs, 23 parameters."""
    inits = [helper.make_tensor(n, TensorProto.FLOAT, s, np.ones(int(np.prod(s)), np.float32))
             for n, s in [("w1", [3, 4]), ("b1", [3]), ("w2", [2, 3]), ("b2", [2])]]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], initializer=inits)
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    # int8: weights 23 B; activations (Relu fused into the Gemm) x 4 + h 3 + y 2 written, x and h read once.
    e = onnx_inference_energy(path, 18)
    assert (e["weight_bytes"], e["activation_write_bytes"], e["activation_read_bytes"]) == (23, 9, 7)
    assert e["total_pj"] == pytest.approx(18 * 0.3 + (23 + 9 + 7) * 12.5)
    f = onnx_inference_energy(path, 18, dtype="fp32")
    assert (f["weight_bytes"], f["activation_write_bytes"], f["activation_read_bytes"]) == (92, 36, 28)
    assert f["total_pj"] > 3 * e["total_pj"]


def test_track_training_reports_non_negative_energy(tmp_path):
    pytest.importorskip("codecarbon")
    import torch

    with track_training("tiny", tmp_path / "emissions") as run:
        model = torch.nn.Linear(16, 4)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(20):
            opt.zero_grad()
            model(torch.randn(32, 16)).pow(2).mean().backward()
            opt.step()
    assert run.energy_kwh >= 0 and run.emissions_kg >= 0 and run.duration_s > 0
    assert (tmp_path / "emissions" / "emissions.csv").is_file()
    d = run.as_dict()
    assert d["label"] == "tiny" and d["method"]
    if d["method"] != "intel_rapl":
        assert d["estimate"] is True


def test_missing_codecarbon_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "codecarbon", None)
    with pytest.raises(TinyKDError, match="CodeCarbon") as err:
        with track_training("x", tmp_path):
            pass
    assert err.value.fix == "pip install 'tinykd[energy]'"
