"""Fuzzing the front door (issue 17): a few hundred generated bad recipes, recipe files and overrides go through the
CLI's main() in-process. Each must exit 2 with a message naming the field or the file, print no traceback, leave no
run folder behind and answer within a few seconds (a hang is an alarm, counted as a failure)."""
import random
import signal
import traceback

import pytest

from tinykd.cli import main

# A fast valid base: bundled 8×8 digits, two tiny MLPs; every case breaks one thing on top of it.
BASE = ["data.name=digits", "data.limit=100", "teacher.model=mlp", "teacher.kwargs={hidden: [16]}",
        "student.model=mlp", "student.kwargs={hidden: [8]}", "teacher.train.epochs=1", "student.train.epochs=1",
        "report.enabled=false"]

# (override key, bad YAML values, text the message must contain)
BAD_VALUES = [
    ("name", ["''", "a/b", "'..'", "../up", "/abs", "[1]", "{a: 1}"], "name"),
    ("seed", ["abc", "-1", "8589934592", "1.5", "[0]", "null", ".nan", "99999999999999999999"], "seed"),
    ("output_dir", ["[1]", "{a: 1}", "null"], "output_dir"),
    ("data.val_fraction", ["1.5", "-0.1", "x", ".inf"], "data.val_fraction"),
    ("data.test_fraction", ["0", "1", "x", "[0.2]"], "data.test_fraction"),
    ("data.limit", ["0", "-5", "x", "1.5"], "data.limit"),
    ("data.normalize", ["maybe", "[1]"], "data.normalize"),
    ("data.options", ["x", "[1]"], "data.options"),
    ("data.name", ["[1]", "{a: 1}", "nope", "mnist5kk"], "data"),
    ("teacher.model", ["5", "[cnn]", "nope"], "teacher.model"),
    ("student.model", ["{a: 1}", "cnnn"], "student.model"),
    ("student.kwargs", ["x", "[1]", "{hiden: [8]}", "{hidden: x}"], "student"),
    ("teacher.kwargs", ["{bogus: 1}", "{widths: [8]}"], "teacher"),
    ("teacher.checkpoint", ["/no/such.safetensors", "[1]", "missing.pt"], "teacher.checkpoint"),
    ("distill.losses", ["[]", "kd", "[{weight: 1}]", "[{name: nope}]", "[{name: kd, temperature: -1}]",
                        "[{name: kd, temperature: 1.0e+9}]", "[{name: kd, alpha: 2}]", "[{name: kd, bogus: 1}]",
                        "[{name: kd, weight: .inf}]", "[{name: kd, weight: 1.0e+300}]", "[{name: at}]",
                        "[{name: at, student: x.y, teacher: layers.0}]", "[{name: fitnet, student: layers.0, teacher: q}]",
                        "[{name: kd, temperature_schedule: {start: 0, end: 1}}]", "[{name: dkd, beta: x}]"],
     "distill.losses"),
    ("distill.scheme", ["nope", "online", "multi_teacher", "[offline]"], "distill"),
    ("distill.teacher_weights", ["nope", "[1, 2, 3]"], "distill"),
    ("distill.transfer", ["x", "{name: mnist1dd}", "{name: idx}", "{name: idx, path: /no/such}", "{path: x}",
                          "{name: digits, path: x}", "{name: digits, bogus: 1}", "{name: digits, options: {bogus: 1}}"],
     "distill.transfer"),
    ("distill.mixup", ["{alpha: 0}", "{ratio: 9}", "x"], "distill.mixup"),
    ("distill.data_free", ["{method: nope}", "{steps_per_epoch: 0}"], "distill.data_free"),
    ("quantize.calibration_samples", ["0", "x"], "quantize.calibration_samples"),
    ("quantize.calibrate_method", ["median"], "quantize.calibrate_method"),
    ("quantize.activation_type", ["int4"], "quantize.activation_type"),
    ("export.opset", ["12", "x"], "export.opset"),
    ("measure.threads", ["0", "-2"], "measure.threads"),
    ("measure.warmup", ["-1"], "measure.warmup"),
    ("measure.repeats", ["4", "x"], "measure.repeats"),
    ("measure.batch_sizes", ["[8]", "[1, 0]", "[1, 100000000]", "'1'", "[1,2,3,4,5,6,7,8,9]", "[]"],
     "measure.batch_sizes"),
    ("compress.prune_student", ["{amount: 1.5}", "{method: x}", "{macs_target: 0}", "x",
                                "{method: unstructured, macs_target: 5}"], "compress.prune_student"),
    ("compress.lowrank", ["{energy: 0}", "{energy: 2}"], "compress.lowrank"),
    ("compress.qat", ["{epochs: 0}", "{lr: -1}"], "compress.qat"),
    ("deploy.target_board", ["nope", "[1]"], "deploy.target_board"),
    ("deploy.boards", ["x", "[1]"], "deploy.boards"),
    ("energy.memory", ["sram_2kb"], "energy.memory"),
    ("report.enabled", ["maybe", "[1]"], "report.enabled"),
]
for model in ("teacher", "student"):
    BAD_VALUES += [
        (f"{model}.train.epochs", ["0", "-1", "x", "1.5", "1000000000"], f"{model}.train.epochs"),
        (f"{model}.train.batch_size", ["0", "x"], f"{model}.train.batch_size"),
        (f"{model}.train.lr", ["0", "-1", "x", ".inf", ".nan"], f"{model}.train.lr"),
        (f"{model}.train.optimizer", ["sgdd", "rmsprop", "[adam]"], f"{model}.train.optimizer"),
        (f"{model}.train.momentum", ["1", "-0.1"], f"{model}.train.momentum"),
        (f"{model}.train.weight_decay", ["-1"], f"{model}.train.weight_decay"),
        (f"{model}.train.schedule", ["linear"], f"{model}.train.schedule"),
        (f"{model}.train.warmup_epochs", ["-1"], f"{model}.train.warmup_epochs"),
        (f"{model}.train.grad_clip", ["0", "-1"], f"{model}.train.grad_clip"),
        (f"{model}.train.label_smoothing", ["1", "-0.1"], f"{model}.train.label_smoothing"),
        (f"{model}.train.shift", ["-1"], f"{model}.train.shift"),
        (f"{model}.train.max_norm", ["0"], f"{model}.train.max_norm"),
        (f"{model}.train.device", ["gpu", "cuda:x", "tpu"], f"{model}.train.device"),
    ]

SECTIONS = {"": ["name", "seed", "output_dir", "data", "teacher", "student", "distill", "quantize", "export",
                 "measure", "compress", "deploy", "energy", "report"],
            "data": ["name", "path", "val_fraction", "test_fraction", "normalize", "limit", "options"],
            "student.train": ["epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
                              "warmup_epochs", "grad_clip", "label_smoothing", "shift", "max_norm", "device"],
            "teacher": ["model", "kwargs", "checkpoint", "train"], "distill": ["losses", "scratch_baseline", "scheme"],
            "quantize": ["per_channel", "calibration_samples"], "measure": ["threads", "warmup", "repeats"]}

MALFORMED_OVERRIDES = [("student.train.epochs", "student.train.epochs"), ("=3", "=3"),
                       ("distill.losses.9.temperature=1", "distill.losses.9"), ("seed.x=1", "seed"),
                       ("student.train.epochs=[1", "student.train.epochs"), ("student.train.epochs={a: 1, a: 2}", "student"),
                       ("distill.losses.x.name=kd", "distill.losses.x"), ("measure.batch_sizes.5=1", "measure.batch_sizes"),
                       ("name=!!python/object/apply:os.system [true]", "name")]

BOMB = "".join(['a: &a ["x","x","x","x","x","x","x","x","x"]\n',
                *(f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg"))])
BAD_FILES = {
    "tab.yaml": "name: x\n\tseed: 1\n", "unclosed.yaml": "name: [x\n", "dup.yaml": "name: a\nname: b\n",
    "latin1.yaml": b"name: caf\xe9\n", "tag.yaml": "name: !!python/object/apply:os.system ['true']\n",
    "bomb.yaml": BOMB + "seed: [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n", "deep.yaml": "[" * 20000,
    "deep2.yaml": "student: {kwargs: {x: " + "[" * 80 + "]" * 80 + "}}\n", "rec.yaml": "student: &s {kwargs: *s}\n",
    "list.yaml": "- a\n- b\n", "scalar.yaml": "just text\n", "empty.yaml": "", "comment.yaml": "# nothing\n",
    "binary.yaml": bytes(range(256)) * 4, "huge.yaml": "#" * (1 << 20) + "\nname: x\n",
    "typo.yaml": "name: x\nstudnet: {model: mlp}\n", "badvalue.yaml": "name: x\nseed: many\n",
    "nul.yaml": "name: \x00\n", "bom_dup.yaml": "\ufeffname: a\nseed: 1\nseed: 2\n",
}


def _typos(rng: random.Random) -> list[tuple[list[str], str]]:
    """Misspelt keys in every section: drop, double or swap a letter."""
    out = []
    for section, keys in SECTIONS.items():
        for key in keys:
            i = rng.randrange(len(key))
            for typo in {key[:i] + key[i + 1:], key[:i] + key[i] * 2 + key[i + 1:], key + "s"} - set(keys) - {""}:
                path = f"{section}.{typo}" if section else typo
                out.append(([f"{path}=1"], typo))
    return out


def _cases(tmp_path) -> list[tuple[str, list[str], str]]:
    rng = random.Random(17)
    cases = [(f"{key}={v}", [f"{key}={v}"], expect) for key, values, expect in BAD_VALUES for v in values]
    cases += [(f"typo {o[0]}", o, expect) for o, expect in _typos(rng)]
    cases += [(f"override {o}", [o], expect) for o, expect in MALFORMED_OVERRIDES]
    for name, text in BAD_FILES.items():
        f = tmp_path / name
        f.write_bytes(text if isinstance(text, bytes) else text.encode())
        cases.append((f"file {name}", ["FILE", str(f)], name))
    for name, data in {"rand.pt": bytes(rng.randrange(256) for _ in range(3000)), "text.pt": b"not: weights\n",
                       "empty.pt": b"", "zip.pt": b"PK\x03\x04" + b"\0" * 100, "bad.safetensors": b"\x08" + b"\0" * 40}.items():
        f = tmp_path / name
        f.write_bytes(data)
        cases.append((f"checkpoint {name}", [f"teacher.checkpoint={f}"], "teacher.checkpoint"))
    (tmp_path / "afile").write_text("x")
    cases += [("output_dir is a file", [f"output_dir={tmp_path / 'afile'}"], "output_dir"),
              ("output_dir under a file", [f"output_dir={tmp_path / 'afile' / 'x'}"], "output_dir"),
              ("data npz missing", ["data.name=npz", "data.path=/no/such.npz"], "/no/such.npz"),
              ("data npz needs path", ["data.name=npz"], "data"),
              ("data bundled with path", ["data.path=x.npz"], "data")]
    # random combinations of two bad values: the message names at least one (validation stops at the first stage
    # that fails, and a recipe's own checks come before building models)
    for _ in range(60):
        (k1, v1, e1), (k2, v2, e2) = rng.sample([c for c in BAD_VALUES if c[0] not in ("output_dir",)], 2)
        a, b = rng.choice(v1), rng.choice(v2)
        cases.append((f"{k1}={a} {k2}={b}", [f"{k1}={a}", f"{k2}={b}"], (e1, e2)))
    return cases


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang


def test_fuzzed_recipes_and_overrides_fail_cleanly(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs"
    cases = _cases(tmp_path)
    assert len(cases) >= 300
    counts = {"inputs": len(cases), "clean": 0, "tracebacks": 0, "hangs": 0, "other": 0}
    problems = []
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for label, args, expect in cases:
            argv = ["run", args[1], *BASE] if args[0] == "FILE" else ["run", *BASE, *args]
            argv += [f"output_dir={out}"] if not any(a.startswith("output_dir=") for a in args) else []
            signal.setitimer(signal.ITIMER_REAL, 10)
            try:
                code = main(argv + ["--quiet"])
            except _Hang:
                counts["hangs"] += 1
                problems.append((label, "hang"))
                continue
            except BaseException as exc:  # noqa: BLE001  (a raw exception would reach the user as a traceback)
                counts["tracebacks"] += 1
                problems.append((label, "".join(traceback.format_exception_only(exc)).strip()[-300:]))
                continue
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            err = capsys.readouterr().err
            left = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
            named = any(e in err for e in (expect if isinstance(expect, tuple) else (expect,)))
            if code == 2 and named and "Traceback" not in err and not left and len(err) < 3000:
                counts["clean"] += 1
            else:
                counts["other"] += 1
                problems.append((label, f"exit {code}, left {left}, expected {expect!r} in: {err.strip()[-300:]}"))
    finally:
        signal.signal(signal.SIGALRM, old)
    print(f"\nfuzz: {counts}")
    assert not problems, f"{counts}\n" + "\n".join(f"{label}: {why}" for label, why in problems)
