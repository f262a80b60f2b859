"""Post-training quantization settings and quantization-aware distillation budgets on the mnist_edge recipe's
distilled student: ONNX Runtime static int8 with minmax / percentile / entropy calibration, uint8 / int8
activations and 1024 / 4096 calibration samples; torchao PT2E PTQ; QAT with KD (T = 4, α = 0.9) for
1–3 epochs. Each int8 model is run in ONNX Runtime on the 10 000 MNIST test images.

    python benchmarks/ptq_qat_sweep.py [OUT_DIR]     # OUT_DIR (default /tmp/qx) keeps the pipeline run

Prints one line per configuration (results/ptq_qat_mnist.md is the table of one such run).
"""
import copy, os, sys, time, json
import numpy as np, torch
torch.set_num_threads(1)
from pathlib import Path
os.chdir(Path(__file__).resolve().parents[1])  # the recipe's data path is relative to the repository root
from tinykd import load_recipe
from tinykd.pipeline import run
from tinykd.data import load_dataset
from tinykd.models import create_model
from tinykd.io import load_state_dict, load_weights
from tinykd.compress.quantize import calibration_subset, quantize_onnx_static
from tinykd.deploy.onnx import export_onnx, ort_predict, ort_session
from tinykd.compress.qat import qat_distill, ptq_pt2e
from tinykd.recipe import TrainConfig
out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/qx"
rd = f"{out}/mnist_edge"
if not os.path.exists(f"{rd}/metrics.json"):
    r = load_recipe("recipes/mnist_edge.yaml", [f"output_dir={out}", "compress.qat=null", "deploy.dynamic_int8=false",
                                                "deploy.c_array=false", "measure.repeats=5", "report.enabled=false",
                                                "quantize.calibration_samples=1024"])
    run(r, progress=False)
m = json.load(open(f"{rd}/metrics.json"))
print("pipeline:", {k: v["accuracy"] for k, v in m["variants"].items()}, flush=True)
b = load_dataset("idx", path="../shared/data/mnist", seed=0, val_fraction=0.05)
rec = load_recipe(f"{rd}/recipe.yaml")
def mk(cfg, d):
    mod = create_model(cfg.model, num_classes=10, in_shape=(1, 28, 28), **cfg.kwargs)
    load_weights(mod, load_state_dict(f"{rd}/{d}/best.safetensors"), source=d); return mod.eval()
teacher, student = mk(rec.teacher, "teacher"), mk(rec.student, "student")
y = b.test.y.numpy()
acc = lambda p: float(np.mean(ort_predict(ort_session(p), b.test.x).argmax(1) == y))
fp32 = f"{rd}/artifacts/student.onnx"
print("fp32 onnx", acc(fp32), flush=True)
for n in (1024, 4096):
    calib = calibration_subset(b.train.x, b.train.y, n, 0)
    for meth in ("minmax", "percentile", "entropy"):
        for act in ("uint8", "int8"):
            t = time.time()
            try:
                p = quantize_onnx_static(fp32, f"{out}/q_{n}_{meth}_{act}.onnx", calib, per_channel=True, activation_type=act, calibrate_method=meth)
                print("ptq", n, meth, act, acc(p), round(time.time() - t), flush=True)
            except Exception as e:
                print("ptq", n, meth, act, "failed", e, flush=True)
calib = torch.as_tensor(calibration_subset(b.train.x, b.train.y, 1024, 0))
q = ptq_pt2e(student, calib)
print("pt2e ptq", acc(export_onnx(q, (1, 28, 28), f"{out}/pt2e_ptq.onnx")), flush=True)
losses = [{"name": "kd", "temperature": 4.0, "alpha": 0.9}]
base = rec.student.train
for epochs, lr in ((1, 2e-4), (2, 1e-3), (3, 5e-4)):
    t = time.time()
    cfg = base.model_copy(update={"epochs": epochs, "lr": lr, "warmup_epochs": 0})
    qm = qat_distill(student, teacher, b.train, b.val, cfg, losses, f"{out}/qat_{epochs}_{lr}", calib=calib, seed=0)
    print("qat", epochs, lr, acc(export_onnx(qm, (1, 28, 28), f"{out}/qat_{epochs}_{lr}.onnx")), [round(h["val_accuracy"], 4) for h in qm.history], round(time.time() - t), flush=True)
