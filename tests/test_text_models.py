"""Text models: the transformer zoo family, hf: folders and from_hf, and their ONNX export and int8 for token ids.

Every model is a tiny BERT built from a config (nothing is downloaded); hf: folders are written by the tests.
"""
from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from tinykd.compress.quantize import calibration_subset, quantize_onnx_dynamic, quantize_with_parity
from tinykd.data.spec import InputSpec, Split
from tinykd.deploy.onnx import export_onnx, ort_predict, ort_predict_inputs, ort_session
from tinykd.distill.capture import forward_with_features, resolve_module
from tinykd.errors import TinyKDError
from tinykd.models import HFClassifier, accepts, count_params, create_model, from_hf, list_models
from tinykd.tasks import Classification

transformers = pytest.importorskip("transformers")

VOCAB, LENGTH = 40, 12
TINY = {"vocab_size": VOCAB, "layers": 2, "heads": 2, "hidden": 32, "intermediate": 64}
SPEC = InputSpec((LENGTH,), 3, "text", vocab_size=VOCAB)
TASK = Classification()


def tokens(n: int, length: int = LENGTH, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded token ids ([CLS]=1 first, [PAD]=0), their mask and a label: how many of the ids 4..11 occur
    (0, 1, 2 or more), which a transformer learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, length + 1, (n,), generator=g)
    mask = (torch.arange(length) < lengths[:, None]).long()
    ids = torch.randint(4, VOCAB, (n, length), generator=g) * mask
    ids[:, 0] = 1
    y = ((ids >= 4) & (ids < 12)).sum(1).clamp(max=2)
    return ids, mask, y


@pytest.fixture(scope="module")
def trained():
    """A tiny transformer trained for 150 steps: its logits depend on the input (~0.8 accuracy). It takes up to 16
    positions, so inputs may also be padded beyond the data's max_length."""
    torch.manual_seed(0)
    model = create_model("transformer", num_classes=3, in_shape=(LENGTH,), dropout=0.0, max_positions=16, **TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        ids, mask, y = tokens(64, seed=step + 1)
        loss = F.cross_entropy(model(ids, mask), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_registered_with_descriptions_and_vocab_size():
    models = list_models()
    assert {"transformer", "transformer_small", "transformer_tiny"} <= set(models)
    assert "Turc et al. 2019" in models["transformer_tiny"]
    assert accepts("transformer", "vocab_size") and accepts("transformer_tiny", "vocab_size")
    assert not accepts("mlp", "vocab_size") and not accepts("no_such_model", "vocab_size")
    assert accepts("hf:/any/folder", "vocab_size") and not accepts("hf:/any/folder", "layers")


@pytest.mark.parametrize("name, layers, hidden, heads, intermediate", [
    ("transformer_tiny", 2, 128, 2, 512), ("transformer_small", 4, 256, 4, 1024), ("transformer", 4, 256, 4, 1024),
])
def test_presets(name, layers, hidden, heads, intermediate):
    model = create_model(name, num_classes=5, in_shape=(32,), vocab_size=100)
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == \
        (layers, hidden, heads, intermediate)
    assert (c.vocab_size, c.max_position_embeddings, c.num_labels, c._attn_implementation) == (100, 32, 5, "eager")
    # embeddings (words, 32 positions, one segment, LayerNorm) + blocks + pooler + head, as BERT counts them
    block = 4 * (hidden * hidden + hidden) + 2 * (hidden * intermediate) + intermediate + hidden + 2 * 2 * hidden
    expected = (100 + 32 + 1) * hidden + 2 * hidden + layers * block + hidden * hidden + hidden + hidden * 5 + 5
    assert count_params(model) == expected


@pytest.mark.parametrize("kwargs, shape, expected", [
    ({}, (LENGTH,), "argument 'vocab_size' is required"),
    ({"vocab_size": 40, "hidden": 30, "heads": 4}, (LENGTH,), "hidden=30 is not a multiple of heads=4"),
    ({"vocab_size": 40}, (1, 28, 28), "takes inputs shaped (max_length,) token ids"),
    ({"vocab_size": 40, "max_positions": 8}, (LENGTH,), "max_positions=8 is shorter than the inputs' max_length 12"),
    ({"vocab_size": 40, "dropout": 1.5}, (LENGTH,), "argument 'dropout' must be a probability"),
    ({"vocab_size": 40, "layers": 0}, (LENGTH,), "argument 'layers' must be an int >= 1"),
    ({"vocab_size": 40, "hiden": 64}, (LENGTH,), "did you mean 'hidden'"),
])
def test_builder_errors(kwargs, shape, expected):
    with pytest.raises(TinyKDError) as err:
        create_model("transformer", num_classes=3, in_shape=shape, **kwargs)
    msg = str(err.value)
    assert msg.startswith("model 'transformer': ") and expected in msg and "fix:" in msg


def test_padding_changes_no_logit(trained):
    ids, mask, _ = tokens(4, length=8)
    longer = torch.randint(1, VOCAB, (4, 16))  # junk ids at the padded positions: the mask must hide them
    longer[:, :8] = torch.where(mask.bool(), ids, longer[:, :8])
    longer_mask = torch.cat([mask, torch.zeros_like(mask)], 1)
    with torch.no_grad():
        short, long, unmasked = trained(ids, mask), trained(longer, longer_mask), trained(ids, None)
    torch.testing.assert_close(short, long, atol=1e-5, rtol=0)
    assert (short - unmasked).abs().max() > 1e-2, "the mask must matter where a sequence is padded"


def test_feature_paths_and_the_task_protocol(trained):
    paths = ["model.bert.embeddings", "model.bert.encoder.layer.0", "model.bert.encoder.layer.1.attention",
             "model.bert.encoder.layer.1.attention.self", "model.bert.pooler", "model.classifier"]
    for p in paths:
        resolve_module(trained, p)
    with pytest.raises(TinyKDError, match="did you mean 'model.bert.encoder.layer.0'"):
        resolve_module(trained, "model.bert.encoder.layers.0")
    ids, mask, y = tokens(6)
    batch = TASK.collate(Split(ids, y, mask), torch.arange(6))
    out = forward_with_features(trained, batch, paths)
    longest = int(mask.sum(1).max())
    assert out.logits.shape == (6, 3) and out.mask is batch.mask
    assert out.features["model.bert.encoder.layer.0"].shape == (6, longest, 32)
    assert out.features["model.bert.pooler"].shape == (6, 32)
    with torch.no_grad():
        torch.testing.assert_close(TASK.logits(trained, batch), trained(ids, mask), atol=1e-5, rtol=0)


def tiny_hf(num_labels: int = 3, cls=None):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16, num_labels=num_labels)
    return (cls or transformers.BertForSequenceClassification)(config).eval()


def test_hf_folder_round_trip(tmp_path, trained):
    hf = tiny_hf()
    hf.save_pretrained(tmp_path / "teacher")
    ids, mask, _ = tokens(5)
    model = create_model(f"hf:{tmp_path / 'teacher'}", num_classes=3, in_shape=(LENGTH,), vocab_size=VOCAB)
    assert isinstance(model, HFClassifier) and model.config._attn_implementation == "eager"
    resolve_module(model, "model.bert.encoder.layer.1")
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(model(ids, mask), want, atol=1e-6, rtol=0)
        torch.testing.assert_close(from_hf(hf, num_classes=3)(ids, mask), want, atol=0, rtol=0)
    # A zoo student saves as a Hugging Face folder and loads back as hf:
    trained.model.save_pretrained(tmp_path / "student")
    again = create_model(f"hf:{tmp_path / 'student'}", num_classes=3, in_shape=(LENGTH,))
    with torch.no_grad():
        torch.testing.assert_close(again(ids, mask), trained(ids, mask), atol=1e-6, rtol=0)


def test_hf_errors(tmp_path):
    def error(name, **kw) -> str:
        with pytest.raises(TinyKDError) as err:
            create_model(f"hf:{name}", num_classes=kw.pop("num_classes", 3), in_shape=kw.pop("in_shape", (LENGTH,)),
                         **kw)
        assert "fix:" in str(err.value)
        return str(err.value)

    assert "no folder at" in error(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    assert "is a file, not a model folder" in error(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    assert "has no config.json" in error(tmp_path / "empty")

    hf = tiny_hf()
    hf.save_pretrained(tmp_path / "ok")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    torch.save(hf.state_dict(), pickled / "pytorch_model.bin")
    msg = error(pickled)
    assert "PyTorch pickle weights (pytorch_model.bin)" in msg and "safetensors only" in msg

    msg = error(tmp_path / "ok", num_classes=4)
    assert "has 3 labels (num_labels in config.json), the data has 4 classes" in msg and "new_head=True" in msg
    assert "max_length 20 exceeds the model's 16 positions" in error(tmp_path / "ok", in_shape=(20,))
    assert "the data's tokenizer has 99 token ids, the model's embedding only 40" in \
        error(tmp_path / "ok", vocab_size=99)
    assert "takes token ids shaped (max_length,)" in error(tmp_path / "ok", in_shape=(1, 28, 28))
    assert "did you mean 'new_head'" in error(tmp_path / "ok", new_heads=True)

    tiny_hf(cls=transformers.BertModel).save_pretrained(tmp_path / "encoder")  # no classification head
    msg = error(tmp_path / "encoder")
    assert "a model without a classification head" in msg and "new_head=True" in msg
    fresh = create_model(f"hf:{tmp_path / 'encoder'}", num_classes=4, in_shape=(LENGTH,), new_head=True)
    assert fresh(*tokens(2)[:2]).shape == (2, 4)

    vit = tmp_path / "vit"
    vit.mkdir()
    (vit / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (vit / "model.safetensors").write_bytes(b"")
    assert "holds a 'vit' model, which has no sequence-classification form" in error(vit)

    with pytest.raises(TinyKDError, match="BertModel is not a sequence classifier"):
        from_hf(tiny_hf(cls=transformers.BertModel))
    with pytest.raises(TinyKDError, match="has 3 labels .* the data has 2 classes"):
        from_hf(hf, num_classes=2)
    with pytest.raises(TinyKDError, match="not a Hugging Face model"):
        from_hf(torch.nn.Linear(2, 2))


def test_missing_transformers_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    with pytest.raises(TinyKDError, match=r"pip install 'tinykd\[text\]'"):
        create_model("transformer_tiny", num_classes=2, in_shape=(8,), vocab_size=10)
    tiny_hf().save_pretrained(tmp_path / "m")
    with pytest.raises(TinyKDError, match=r"pip install 'tinykd\[text\]'"):
        create_model(f"hf:{tmp_path / 'm'}", num_classes=3, in_shape=(8,))


def check_dynamic(path, model):
    graph = onnx.load(str(path)).graph
    for value in graph.input:
        dims = [d.dim_param for d in value.type.tensor_type.shape.dim]
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT64 and dims == ["batch", "sequence"]
    session = ort_session(path)
    for batch, length in [(1, 5), (3, LENGTH), (6, 9)]:
        ids, mask, _ = tokens(batch, length, seed=length)
        with torch.no_grad():
            want = model(ids, mask).numpy()
        (got,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert want.std(0).max() > 0.1, "the logits should depend on the input"


@pytest.mark.parametrize("exporter", ["auto", "torchscript"])
def test_onnx_export_has_dynamic_batch_and_sequence(trained, tmp_path, exporter):
    # the Task's example has batch 1: export_onnx repeats it, or torch.export would fix the batch size at 1
    path = export_onnx(trained, None, tmp_path / "student.onnx", example=TASK.example_inputs(SPEC),
                       input_names=TASK.input_names(SPEC), dynamic_axes=TASK.dynamic_axes(SPEC), exporter=exporter)
    check_dynamic(path, trained)
    by_torch_export = any(p.key.startswith("pkg.torch.onnx") for n in onnx.load(str(path)).graph.node
                          for p in n.metadata_props)
    assert by_torch_export == (exporter == "auto"), "torch.export handles the Hugging Face encoder: no fallback"


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "student.onnx"
    return export_onnx(trained, None, path, example=TASK.example_inputs(SPEC, 2), input_names=TASK.input_names(SPEC),
                       dynamic_axes=TASK.dynamic_axes(SPEC), exporter="torchscript")


def test_ort_predict_takes_named_or_ordered_token_inputs(trained, exported):
    ids, mask, _ = tokens(37)
    session = ort_session(exported)
    with torch.no_grad():
        want = trained(ids, mask).numpy()
    ordered = ort_predict(session, (ids, mask), batch_size=8)  # each batch cut to its longest sequence
    np.testing.assert_allclose(ordered, want, atol=1e-4, rtol=0)
    named = ort_predict_inputs(session, {"attention_mask": mask.numpy(), "input_ids": ids.numpy().astype(np.int32)},
                               batch_size=16, trim=False)
    np.testing.assert_allclose(named, ordered, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="1 inputs for a session that takes 2"):
        ort_predict_inputs(session, (ids,))


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_int8_agrees_with_fp32(exported, tmp_path, per_channel):
    int8 = quantize_onnx_dynamic(exported, tmp_path / "student.int8.onnx", op_types=("MatMul", "Gemm"),
                                 per_channel=per_channel)
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in onnx.load(str(int8)).graph.node)
    ids, mask, _ = tokens(512, seed=99)
    ref = ort_predict(ort_session(exported), (ids, mask)).argmax(1)
    got = ort_predict(ort_session(int8), (ids, mask)).argmax(1)
    assert (got == ref).mean() >= 0.97
    assert int8.stat().st_size < 0.8 * exported.stat().st_size


def test_static_int8_of_token_inputs_quantizes_the_matmuls(exported, tmp_path):
    ids, mask, y = tokens(256, seed=7)
    calib = calibration_subset(ids, y, 64, seed=0, mask=mask)
    assert calib["input_ids"].dtype == np.int64 and calib["attention_mask"].shape == (64, LENGTH)
    check = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    int8, facts = quantize_with_parity(exported, tmp_path / "student.int8.onnx", calib, check, target=0.97)
    assert facts["met"] and facts["checked_on"] == 256 and facts["calibration_samples"] == 64
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "QuantizeLinear" in ops and "Softmax" in ops
    fed_softmax = {n.input[0] for n in onnx.load(str(int8)).graph.node if n.op_type == "Softmax"}
    dequantized = {n.output[0] for n in onnx.load(str(int8)).graph.node if n.op_type == "DequantizeLinear"}
    assert not fed_softmax & dequantized, "the attention scores (mask added) stay in float"
