"""Compression: pruning, low-rank factorisation, quantization-aware distillation and ONNX dynamic int8 / fp16.

Every check compares with an independent answer: weights counted by hand, MACs from the FlopCounter, an SVD
done here with numpy, ONNX Runtime against PyTorch.
"""
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tinykd.compress.lowrank import factorize_layer, lowrank_factorize
from tinykd.compress.prune import (finetune, iterative_prune, prune_structured, prune_unstructured,
                                   sparsity_report)
from tinykd.compress.qat import PT2EModel, ptq_pt2e, qat_distill
from tinykd.compress.quantize import convert_onnx_fp16, quantize_onnx_dynamic
from tinykd.data.spec import Split
from tinykd.deploy.onnx import export_onnx, ort_predict, ort_session
from tinykd.errors import TinyKDError
from tinykd.inference import predict_logits
from tinykd.measure.cost import count_macs
from tinykd.models import count_params, create_model
from tinykd.recipe import TrainConfig

SHAPE = (1, 8, 8)
FAST = TrainConfig(epochs=1, batch_size=32, lr=1e-3)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread; more only contend for the cores of a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _quadrants(n: int, seed: int) -> Split:
    """4 classes: a bright 4x4 patch in one quadrant of an 8x8 noise image (linearly separable)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.5 * torch.randn(n, *SHAPE, generator=g)
    for c in range(4):
        r, col = 4 * (c // 2), 4 * (c % 2)
        x[y == c, 0, r:r + 4, col:col + 4] += 1.5
    return Split(x, y)


def _accuracy(model: nn.Module, split: Split) -> float:
    return (predict_logits(model, split.x).argmax(1) == split.y).float().mean().item()


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A trained teacher and a KD-trained student on the quadrant task (trained once for the module)."""
    out = tmp_path_factory.mktemp("task")
    train, val = _quadrants(400, 0), _quadrants(120, 1)
    torch.manual_seed(0)
    teacher = create_model("cnn", num_classes=4, in_shape=SHAPE, widths=[8, 16], hidden=32)
    student = create_model("cnn", num_classes=4, in_shape=SHAPE, widths=[8, 8], hidden=16, dropout=0.1)
    cfg = TrainConfig(epochs=3, batch_size=32)
    finetune(teacher, None, train, val, cfg, [{"name": "ce"}], out / "teacher", label="teacher")
    finetune(student, teacher, train, val, cfg, [{"name": "kd", "temperature": 4}], out / "student", label="student")
    return teacher.eval(), student.eval(), train, val


def _small(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    shapes = {"cnn": ((1, 16, 16), {"widths": [8, 16], "hidden": 32}), "resnet8": ((3, 16, 16), {"width": 0.5}),
              "dscnn": ((1, 20, 10), {"width": 16, "blocks": 2}), "mlp": ((1, 8, 8), {"hidden": [32, 16]}),
              "cnn1d": ((1, 40), {"widths": [8, 8]})}
    shape, kwargs = shapes[name]
    return create_model(name, num_classes=10, in_shape=shape, **kwargs).eval(), shape


# ----- unstructured ------------------------------------------------------------------------------------
def _dense_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_global_unstructured_sparsity_hits_target_and_removes_smallest_weights():
    model, _ = _small("cnn")
    before = _dense_weights(model)
    report = prune_unstructured(model, 0.6)
    after = _dense_weights(model)
    zeros = sum(int((w == 0).sum()) for w in after.values())
    total = sum(w.numel() for w in after.values())
    assert zeros / total == pytest.approx(0.6, abs=0.01)
    assert report["sparsity"] == pytest.approx(zeros / total)
    # global ranking: every removed weight was no larger than every kept one, across layers
    removed = torch.cat([before[n][after[n] == 0].abs() for n in before])
    kept = torch.cat([before[n][after[n] != 0].abs() for n in before])
    assert removed.max() <= kept.min()
    # the masks are baked in: plain parameters, no reparametrisation hooks left
    assert not any(hasattr(m, "weight_orig") or m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(after[n][after[n] != 0], before[n][after[n] != 0]) for n in before)


def test_layer_scope_prunes_each_layer_by_the_same_fraction():
    model, _ = _small("cnn")
    report = prune_unstructured(model, 0.3, scope="layer")
    for name, row in report["layers"].items():
        assert row["zeros"] == round(0.3 * row["weights"]), name


def test_higher_sparsity_grows_the_same_mask():
    model, _ = _small("mlp")
    prune_unstructured(model, 0.3)
    first = {n: w == 0 for n, w in _dense_weights(model).items()}
    report = prune_unstructured(model, 0.7)
    assert report["sparsity"] == pytest.approx(0.7, abs=0.01)
    assert all(((w == 0) | ~first[n]).all() for n, w in _dense_weights(model).items())


@pytest.mark.parametrize("bad", [1.0, -0.1, 2, "half"])
def test_unstructured_rejects_sparsity_outside_unit_interval(bad):
    model, _ = _small("mlp")
    with pytest.raises(TinyKDError, match=r"sparsity must be a fraction in \[0, 1\)"):
        prune_unstructured(model, bad)


def test_unstructured_rejects_unknown_scope():
    with pytest.raises(TinyKDError, match="unknown pruning scope 'local'"):
        prune_unstructured(_small("mlp")[0], 0.5, scope="local")


# ----- structured ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnn", "resnet8", "dscnn", "mlp", "cnn1d"])
def test_structured_pruning_removes_channels_params_and_macs(name):
    model, shape = _small(name)
    params, macs = count_params(model), count_macs(model, shape)
    pruned = prune_structured(model, torch.randn(1, *shape), ratio=0.5)
    assert count_params(pruned) < 0.6 * params
    assert count_macs(pruned, shape) < 0.6 * macs
    assert count_params(model) == params  # the input model is untouched
    x = torch.randn(5, *shape)
    assert pruned(x).shape == (5, 10)  # the classifier keeps its 10 outputs


def test_structured_pruned_resnet_exports_to_onnx_and_runs_in_ort(tmp_path):
    model, shape = _small("resnet8")  # residual adds couple channels across blocks
    pruned = prune_structured(model, torch.randn(1, *shape), ratio=0.4)
    path = export_onnx(pruned, shape, tmp_path / "pruned.onnx")
    x = torch.randn(6, *shape)
    np.testing.assert_allclose(ort_predict(ort_session(path), x), predict_logits(pruned, x).numpy(), atol=1e-4)


def test_structured_macs_target_is_met():
    model, shape = _small("cnn")
    macs = count_macs(model, shape)
    pruned = prune_structured(model, torch.randn(1, *shape), macs_target=macs // 3)
    assert 0.7 * (macs // 3) < count_macs(pruned, shape) <= macs // 3


def test_structured_errors_name_the_problem():
    model, shape = _small("cnn")
    x = torch.randn(1, *shape)
    macs = count_macs(model, shape)
    with pytest.raises(TinyKDError, match=r"channel pruning ratio must be in \[0, 1\), got 1.0"):
        prune_structured(model, x, ratio=1.0)
    with pytest.raises(TinyKDError, match="exactly one of ratio and macs_target"):
        prune_structured(model, x)
    with pytest.raises(TinyKDError, match=f"is not below the model's current {macs:,} MACs"):
        prune_structured(model, x, macs_target=macs + 1)
    with pytest.raises(TinyKDError, match=r"(?s)macs_target 10 is unreachable.*use a target of at least"):
        prune_structured(model, x, macs_target=10)
    with pytest.raises(TinyKDError, match="(?s)no module at path 'head.fcc'.*did you mean 'head.fc'"):
        prune_structured(model, x, ratio=0.5, ignored_layers=["head.fcc"])
    with pytest.raises(TinyKDError, match="unknown channel importance 'taylor'"):
        prune_structured(model, x, ratio=0.5, importance="taylor")


# ----- iterative pruning with KD fine-tuning -----------------------------------------------------------
def test_iterative_unstructured_pruning_with_kd_reaches_target(task, tmp_path):
    teacher, student, train, val = task
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    model = create_model("cnn", num_classes=4, in_shape=SHAPE, widths=[8, 8], hidden=16, dropout=0.1)
    model.load_state_dict(student.state_dict())
    model, rows = iterative_prune(model, teacher, train, val, target_sparsity=0.7, steps=2, finetune_cfg=FAST,
                                  losses=[{"name": "kd", "temperature": 4}], out_dir=tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0]["sparsity"] == 0
    assert rows[1]["sparsity"] == pytest.approx(0.7 - 0.7 / 8, abs=0.01)  # cubic: s_f + (0 - s_f)(1 - 1/2)^3
    assert rows[2]["sparsity"] == pytest.approx(0.7, abs=0.01)
    assert sparsity_report(model)["sparsity"] == pytest.approx(0.7, abs=0.01)  # fine-tuning regrew nothing
    assert not any(hasattr(m, "weight_orig") for m in model.modules())
    assert (tmp_path / "step1" / "last.json").is_file() and (tmp_path / "step2" / "last.json").is_file()
    assert rows[2]["val_accuracy"] >= rows[0]["val_accuracy"] - 0.1
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())


def test_iterative_structured_pruning_meets_macs_target(task, tmp_path):
    teacher, student, train, val = task
    macs = count_macs(student, SHAPE)
    model, rows = iterative_prune(student, teacher, train, val, macs_target=macs // 2, steps=2, structured=True,
                                  finetune_cfg=FAST, out_dir=tmp_path)
    assert rows[-1]["macs"] == count_macs(model, SHAPE) <= macs // 2
    assert rows[-1]["params"] < rows[0]["params"]
    assert rows[1]["macs"] > rows[2]["macs"]
    assert count_macs(student, SHAPE) == macs  # the caller's model is untouched


def test_iterative_prune_rejects_macs_target_without_structure(task, tmp_path):
    teacher, student, train, val = task
    with pytest.raises(TinyKDError, match="macs_target needs structured=True"):
        iterative_prune(student, teacher, train, val, macs_target=1000, finetune_cfg=FAST, out_dir=tmp_path)


# ----- low-rank ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer,x", [
    (nn.Linear(12, 7), torch.randn(4, 12)),
    (nn.Conv2d(3, 5, 3, stride=2, padding=1), torch.randn(2, 3, 9, 9)),
    (nn.Conv2d(4, 6, (3, 2), dilation=2, bias=False), torch.randn(2, 4, 10, 10)),
    (nn.Conv1d(3, 8, 5, padding=2), torch.randn(2, 3, 20)),
])
def test_full_rank_factorisation_is_exact(layer, x):
    torch.manual_seed(0)
    full = min(layer.weight.shape[0], layer.weight[0].numel())
    factored = factorize_layer(layer, full)
    with torch.no_grad():
        torch.testing.assert_close(factored(x), layer(x), atol=1e-5, rtol=1e-5)


def test_energy_rule_matches_a_hand_computed_svd():
    g = np.random.default_rng(0)
    u, _ = np.linalg.qr(g.standard_normal((20, 6)))
    v, _ = np.linalg.qr(g.standard_normal((30, 6)))
    sigma = np.array([5.0, 4.0, 3.0, 1.0, 0.5, 0.1])
    w = (u * sigma) @ v.T  # (20, 30): singular values sigma
    energy = np.cumsum(sigma**2) / np.sum(sigma**2)  # 0.49, 0.80, 0.98, 0.99...
    model = nn.Sequential(nn.Linear(30, 20))
    model[0].weight.data = torch.tensor(w, dtype=torch.float32)
    report = lowrank_factorize(model, energy=0.9)
    expected = int(np.argmax(energy >= 0.9)) + 1
    assert expected == 3 and report["layers"][0]["rank"] == expected
    assert report["layers"][0]["energy"] == pytest.approx(energy[expected - 1])
    best = (u[:, :3] * sigma[:3]) @ v[:, :3].T  # Eckart-Young: the best rank-3 approximation
    product = (model[0][1].weight @ model[0][0].weight).detach().double().numpy()
    np.testing.assert_allclose(product, best, atol=1e-5)
    assert report["params_after"] == count_params(model) == 3 * (30 + 20) + 20


def test_lowrank_reduces_parameters_and_kd_fine_tuning_recovers(task, tmp_path):
    teacher, student, train, val = task
    model = create_model("cnn", num_classes=4, in_shape=SHAPE, widths=[8, 8], hidden=16, dropout=0.1)
    model.load_state_dict(student.state_dict())
    report = lowrank_factorize(model, energy=0.6, skip=["head.fc"])
    assert report["params_after"] == count_params(model) < report["params_before"] == count_params(student)
    rows = {r["layer"]: r for r in report["layers"]}
    assert "head.fc" not in rows and rows["head.fc1"]["factorized"]
    assert all(r["params_after"] < r["params_before"] for r in rows.values() if r["factorized"])
    assert isinstance(model.head.fc1, nn.Sequential)
    factored = _accuracy(model, val)
    finetune(model, teacher, train, val, TrainConfig(epochs=2, batch_size=32), [{"name": "kd"}], tmp_path / "ft",
             label="lowrank")
    assert _accuracy(model, val) >= max(factored, 0.8)


def test_param_budget_is_met():
    model, shape = _small("mlp")
    budget = count_params(model) // 2
    report = lowrank_factorize(model, param_budget=budget)
    assert count_params(model) <= budget
    assert model(torch.randn(2, *shape)).shape == (2, 10)
    assert 0 < report["energy"] < 1


def test_lowrank_errors_name_the_problem():
    model, _ = _small("mlp")
    with pytest.raises(TinyKDError, match="give energy or param_budget, not both"):
        lowrank_factorize(model, energy=0.9, param_budget=100)
    with pytest.raises(TinyKDError, match=r"(?s)param_budget 20 is unreachable.*use a budget of at least"):
        lowrank_factorize(model, param_budget=20)
    with pytest.raises(TinyKDError, match=r"energy must be in \(0, 1\]"):
        lowrank_factorize(model, energy=1.5)
    with pytest.raises(TinyKDError, match="(?s)skip: the model has no module at path 'fcc'.*did you mean 'fc'"):
        lowrank_factorize(model, skip=["fcc"])
    with pytest.raises(TinyKDError, match=r"rank must be an int in \[1, 4\]"):
        factorize_layer(nn.Linear(4, 9), 5)


# ----- quantization-aware distillation (PT2E) -----------------------------------------------------------
def test_qat_distill_gives_an_int8_model_close_to_fp32(task, tmp_path):
    teacher, student, train, val = task
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_state = {k: v.clone() for k, v in student.state_dict().items()}
    fp32 = _accuracy(student, val)
    q = qat_distill(student, teacher, train, val, TrainConfig(epochs=2, batch_size=32, lr=5e-4),
                    [{"name": "kd", "temperature": 4}], tmp_path / "qat")
    assert isinstance(q, PT2EModel) and len(q.history) == 2
    assert _accuracy(q, val) >= fp32 - 0.05
    # the teacher (weights and BN statistics) and the caller's student are untouched; the QAT copy trained
    assert all(torch.equal(teacher_state[k], v) for k, v in teacher.state_dict().items())
    assert all(torch.equal(student_state[k], v) for k, v in student.state_dict().items())
    assert not torch.allclose(q.gm.head.fc.bias, student.head.fc.bias)
    int8 = [b for b in q.gm.buffers() if b.dtype == torch.int8] + \
        [getattr(q.gm, n.target) for n in q.gm.graph.nodes if n.op == "get_attr"
         and isinstance(getattr(q.gm, n.target, None), torch.Tensor) and getattr(q.gm, n.target).dtype == torch.int8]
    assert int8, "the converted graph stores int8 weights"

    # ONNX int8 QDQ export: with ORT's fusions off it is the same computation as PyTorch
    import onnxruntime as ort
    path = export_onnx(q, SHAPE, tmp_path / "qat.onnx")
    graph = onnx.load(str(path)).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    assert sum(i.data_type == onnx.TensorProto.INT8 for i in graph.initializer) >= 3  # 2 convs + 2 linears
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    torch_logits = predict_logits(q, val.x).numpy()
    np.testing.assert_allclose(ort_predict(plain, val.x), torch_logits, atol=1e-4)
    # with ORT's integer kernels (QLinearConv...) rounding differs a little; predictions still agree
    fused = ort_predict(ort_session(path), val.x)
    assert (fused.argmax(1) == torch_logits.argmax(1)).mean() >= 0.8


def test_ptq_pt2e_baseline_runs_close_to_fp32(task):
    _, student, train, val = task
    q = ptq_pt2e(student, train.x[:128])
    assert _accuracy(q, val) >= _accuracy(student, val) - 0.1
    assert not q.training


def test_qat_distill_rejects_feature_terms(task, tmp_path):
    teacher, student, train, val = task
    with pytest.raises(TinyKDError, match=r"loss terms \['fitnet'\] capture student features"):
        qat_distill(student, teacher, train, val, FAST,
                    [{"name": "kd"}, {"name": "fitnet", "student": "features.1", "teacher": "features.1"}], tmp_path)


# ----- ONNX dynamic int8 and fp16 -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_shape=(1, 8, 8), hidden=[64, 32]).eval()
    path = export_onnx(model, (1, 8, 8), tmp_path_factory.mktemp("onnx") / "fp32.onnx")
    x = torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    return path, x, ort_predict(ort_session(path), x)


def test_dynamic_int8_agrees_with_fp32(fp32_onnx, tmp_path):
    path, x, ref = fp32_onnx
    out = quantize_onnx_dynamic(path, tmp_path / "dyn.onnx")
    graph = onnx.load(str(out)).graph
    assert "MatMulInteger" in {n.op_type for n in graph.node}
    assert out.stat().st_size < 0.5 * path.stat().st_size  # int8 weights: about a quarter of the bytes
    logits = ort_predict(ort_session(out), x)
    assert (logits.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert np.abs(logits - ref).mean() < 0.1 * np.abs(ref).mean()  # mean error under 10% of the logit size


def test_fp16_keeps_float32_io_and_agrees_with_fp32(fp32_onnx, tmp_path):
    path, x, ref = fp32_onnx
    out = convert_onnx_fp16(path, tmp_path / "fp16.onnx")
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    assert {i.data_type for i in model.graph.initializer} & floats == {onnx.TensorProto.FLOAT16}
    logits = ort_predict(ort_session(out), x)
    assert logits.dtype == np.float32
    assert (logits.argmax(1) == ref.argmax(1)).mean() >= 0.95
    np.testing.assert_allclose(logits, ref, atol=1e-2)  # fp16 keeps ~3 significant digits


def test_onnx_conversions_report_a_missing_file(tmp_path):
    with pytest.raises(TinyKDError, match="no ONNX model at"):
        quantize_onnx_dynamic(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    with pytest.raises(TinyKDError, match="export the fp32 model first"):
        convert_onnx_fp16(tmp_path / "missing.onnx", tmp_path / "out.onnx")


def _mlp_onnx(tmp_path):
    import torch
    from torch import nn

    from tinykd.deploy.onnx import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    return export_onnx(model, (6,), tmp_path / "mlp.onnx")


def test_parity_quantization_stops_at_the_first_setting_that_meets_the_target(tmp_path):
    from tinykd.compress.quantize import quantizable_nodes, quantize_with_parity

    fp32 = _mlp_onnx(tmp_path)
    rng = np.random.default_rng(0)
    calib, check = rng.standard_normal((256, 6), dtype=np.float32), rng.standard_normal((512, 6), dtype=np.float32)
    # target 0: the plain int8 model meets it, nothing else is tried
    _, facts = quantize_with_parity(fp32, tmp_path / "a.onnx", calib, check, target=0.0)
    assert facts["met"] and len(facts["attempts"]) == 1 and facts["kept_fp32"] == [] and facts["quantized_nodes"] == 3
    # an unreachable target: 16-bit activations, then each layer alone, then the most sensitive first; one layer
    # always stays quantized and the best attempt is kept, marked as missing the target
    path, facts = quantize_with_parity(fp32, tmp_path / "b.onnx", calib, check, target=1.01)
    nodes = quantizable_nodes(fp32)
    assert len(nodes) == 3 and not facts["met"]
    acts = [a["activation_type"] for a in facts["attempts"]]
    assert acts[:2] == ["uint8", "uint16"] and len(facts["attempts"]) == 2 + 3 + 2
    assert facts["quantized_nodes"] >= 1 and len(facts["kept_fp32"]) <= 2
    assert facts["agreement"] == max(a["agreement"] for a in facts["attempts"])
    # the chosen model is the one on disk: its agreement recomputed independently
    from tinykd.deploy.onnx import ort_predict, ort_session

    ref = ort_predict(ort_session(fp32), check).argmax(1)
    got = ort_predict(ort_session(path), check).argmax(1)
    assert np.mean(ref == got) == pytest.approx(facts["agreement"])
    # an explicit list keeps exactly those nodes in fp32
    _, facts = quantize_with_parity(fp32, tmp_path / "c.onnx", calib, check, target=1.01, keep_fp32=[nodes[0]])
    assert facts["kept_fp32"] == [nodes[0]] and len(facts["attempts"]) == 1
