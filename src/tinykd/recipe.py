"""A recipe: every setting of a run, validated. YAML in (``yaml.safe_load``), dotted overrides on top.

Unknown keys, wrong types and missing files become a RecipeError that names the field, says what was
expected and suggests a fix (the closest valid key for a typo). No code named in a recipe is executed:
custom models enter through the Python API.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RecipeError, closest
from .yamlload import load_yaml, short_repr

MAX_SEED = 2**32 - 1  # numpy's seeds end here; derived seeds (seed + 200 + i, ...) stay far inside torch's range
MAX_LATENCY_BATCH = 4096  # random inputs of this many samples must fit in memory next to the models
MAX_LOSS_WEIGHT = 1e6  # |weight| of a loss term: larger is an overflow in waiting, not a setting


class _Section(BaseModel):
    # Frozen: a validated recipe is a value. A changed setting is a new recipe (model_copy, or load_recipe with
    # overrides), so no stage can alter what the others see, and the recipe a run saves is the one it ran.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataConfig(_Section):
    """Which dataset, where its files are, and how it is split."""

    name: str = "mnist5k"
    path: str | None = None
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    normalize: bool = True
    limit: int | None = Field(None, ge=1)
    # A labelling budget: keep the labels of this many training samples (stratified); the teacher and the scratch
    # student train on those alone, the distilled student also learns from the teacher's outputs on the rest.
    labelled: int | None = Field(None, ge=1, le=100_000_000)
    # The classes' names in class-index order (label 0 first), or the path of a file of one name per line; the
    # report, figures and exported preprocessing show them. Image folders and string labels carry their own names.
    class_names: list[str] | str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("class_names", mode="before")
    @classmethod
    def _names_are_text(cls, v):
        if isinstance(v, list):
            for i, name in enumerate(v):
                if not isinstance(name, str) or not name.strip():
                    raise ValueError(f"item {i} is {short_repr(name)}, not a name (YAML reads unquoted yes/no/on/off/"
                                     "true/false as booleans and digits as numbers): quote every name, e.g. "
                                     "['yes', 'no']")
        return v


class TrainConfig(_Section):
    """Optimizer, schedule and budget of one training run."""

    epochs: int = Field(8, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_size: int = Field(30, ge=1)
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: int = Field(0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Random shift ("jitter") of each training input by up to this many positions (images: pixels along height and
    # width; signals: steps along time), border filled with the background; the teacher labels the same shifted view.
    shift: int = Field(0, ge=0)
    # Max-norm constraint (Hinton et al. 2012; Srivastava et al. 2014): after every step each unit's incoming weight
    # vector (a row of a linear weight, a filter of a convolution) is projected back into the L2 ball of this radius.
    max_norm: float | None = Field(None, gt=0)
    # Where the model trains: "auto" (a CUDA GPU when torch sees one, else the CPU), "cpu", "cuda" or "cuda:N".
    # Checkpoints and the trained model come back on the CPU either way.
    device: str = "auto"
    # Intra-op threads of training on the CPU: "auto" (the cores this process may use — its CPU affinity mask,
    # capped by OMP_NUM_THREADS when set — at most 4, past which tiny models gain nothing) or a number.
    threads: int | Literal["auto"] = "auto"

    @field_validator("threads")
    @classmethod
    def _positive_threads(cls, v):
        if v != "auto" and not 1 <= int(v) <= 1024:
            raise ValueError("must be 'auto' or a number of threads from 1 to 1024")
        return v

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N' (a GPU's index, e.g. cuda:1)")
        return v


class ModelConfig(_Section):
    """A model from the registry; a teacher may come from a safetensors checkpoint instead of training."""

    model: str = "cnn"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)


class StudentConfig(ModelConfig):
    """The student: a model like the teacher's section, optionally initialised from the teacher's weights."""

    # DistilBERT's initialisation (Sanh et al. 2019): the distilled student starts as these teacher layers (0-based;
    # "every_other": 0, 2, 4, ...) with the teacher's embeddings, pooler and classifier. The student's model and
    # kwargs must then be the teacher's architecture with as many layers; the scratch baseline starts fresh.
    init_layers: list[int] | Literal["every_other"] | None = None

    @field_validator("init_layers", mode="before")
    @classmethod
    def _layer_indices(cls, v):
        indices = isinstance(v, list) and v and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)
        if v is not None and v != "every_other" and not indices:
            raise ValueError("must be 'every_other' or a non-empty list of teacher layer indices (0-based, e.g. [0, 2])")
        return v


class LossSpec(BaseModel):
    """One weighted loss term; its own hyper-parameters are checked by the term itself."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)
    name: str
    weight: float = Field(1.0, ge=-MAX_LOSS_WEIGHT, le=MAX_LOSS_WEIGHT)

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TransferConfig(_Section):
    """An unlabelled transfer set (Bucilă et al. 2006; Hinton et al. 2015): inputs only the teacher labels.

    Any registered dataset (files, or a generator such as mnist1d with another ``dataset_seed``); its
    labels are dropped and its inputs are standardised with the labelled training set's statistics.
    """

    name: str
    path: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    splits: list[Literal["train", "val", "test"]] = Field(default_factory=lambda: ["train", "val", "test"])
    # Samples drawn from the set in all, stratified, as data.limit: with every split, the number of transfer inputs.
    limit: int | None = Field(None, ge=1)


class MixupConfig(_Section):
    """Mixup of training inputs (Zhang et al. 2018) as extra transfer data: x = λ·x_i + (1 − λ)·x_j,
    λ ~ Beta(alpha, alpha); mixed samples carry no label, so only teacher-based terms learn from them."""

    alpha: float = Field(1.0, gt=0)
    ratio: float = Field(1.0, gt=0, le=4)  # mixed samples added per batch, as a fraction of the batch size


class DataFreeConfig(_Section):
    """Data-free distillation: the distilled student sees no training input, only inputs synthesised from the
    frozen teacher. DAFL (Chen et al. 2019): a generator trained against the teacher makes every batch.
    DeepInversion (Yin et al. 2020): inputs optimised to match the teacher's BatchNorm statistics (needs a teacher
    with BatchNorm). The real validation split still picks the best epoch; the scratch baseline, the reference,
    trains on the real data."""

    method: Literal["dafl", "deepinversion"] = "dafl"
    # DAFL
    steps_per_epoch: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=2)
    latent_dim: int = Field(100, ge=1)
    generator_base: int = Field(32, ge=2)  # channels of the generator's first block
    generator_lr: float = Field(0.2, gt=0)  # the authors' Adam learning rate for G
    generator_schedule: Literal["constant", "cosine"] = "cosine"  # G's learning rate over the student's epochs
    jitter: int = Field(2, ge=0)  # random shift (positions) of each generated sample before the student sees it
    # DFAD's term: G also maximises the student-teacher disagreement (0: plain DAFL). It keeps G off a single family
    # of inputs: 3 seeds 95.92 ± 0.57 % with it, 91.70 ± 6.23 % without (benchmarks/results/schemes_datafree_adv.md)
    adversarial: float = Field(1.0, ge=0)
    one_hot: float = Field(1.0, ge=0)
    activation: float = Field(0.1, ge=0)
    info_entropy: float = Field(2.17, ge=0)  # the authors' 5 with log10, in natural log
    # DeepInversion
    samples: int = Field(2000, ge=1)
    iterations: int = Field(200, ge=1)
    inversion_lr: float = Field(0.1, gt=0)
    bn_weight: float = Field(0.05, ge=0)


class OnPolicyConfig(_Section):
    """Language models, GKD (Agarwal et al. 2024): a ``fraction`` (λ) of the batches are the student's own
    continuations of each block's first ``prompt_tokens`` tokens, sampled at ``temperature`` / ``top_k``, which the
    teacher scores; the loss terms see the generated positions only. ``teacher_mix`` α > 0 (MiniLLM's teacher-mixed
    sampling) draws each token from α·p_teacher (temperature 1) + (1 − α)·the student's sampling distribution."""

    fraction: float = Field(0.5, ge=0.0, le=1.0)
    prompt_tokens: int = Field(32, ge=1, le=8192)
    temperature: float = Field(1.0, ge=0.0, le=100.0)  # 0: greedy
    top_k: int | None = Field(None, ge=1)
    teacher_mix: float = Field(0.0, ge=0.0, le=1.0)


class SequenceKDConfig(_Section):
    """Language models, sequence-level KD (Kim & Rush 2016): the student trains on the teacher's continuations of
    each training block's first ``prompt_tokens`` tokens (greedy at temperature 0), generated once."""

    prompt_tokens: int = Field(32, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=100.0)
    top_k: int | None = Field(None, ge=1)


class DistillConfig(_Section):
    """The loss terms of distillation, the scheme (who teaches whom), extra transfer data, and whether to train
    the from-scratch baseline.

    ``scheme`` names a registered scheme (``tinykd.distill.schemes.SCHEMES``: offline, multi_teacher, assistant,
    data_free, online, self); each scheme's file says what it reads of this section and checks it. ``teachers`` and
    ``teacher_weights`` belong to multi_teacher, ``assistants`` and ``assistant_width_arg`` to assistant, ``peers``
    to online, ``data_free`` to data_free. ``cache`` serves the teacher's outputs from a memory-mapped store
    (schemes with a teacher in the loop), computed once and reused across epochs and, with a shared ``cache_dir``,
    across runs.
    """

    losses: list[LossSpec] = Field(default_factory=lambda: [LossSpec(name="kd", temperature=4.0, alpha=0.9)])
    scratch_baseline: bool = True
    transfer: TransferConfig | None = None
    mixup: MixupConfig | None = None
    scheme: str = "offline"  # a registered scheme: distill.schemes.SCHEMES
    cache: bool = False
    cache_dir: str | None = None  # default: <run>/teacher_cache
    # Language models: the cache keeps the teacher's k most likely tokens per position (fp16 log-probabilities and
    # their ids), the rest of its probability spread uniformly over the other tokens (distill/lm_cache.py).
    cache_top_k: int = Field(16, ge=1)
    teachers: list[ModelConfig] = Field(default_factory=list)
    teacher_weights: Literal["mean", "entropy", "confidence", "label"] | list[float] = "mean"
    assistants: list[ModelConfig] = Field(default_factory=list)
    assistant_width_arg: str | None = None  # the student kwarg scaled to size an automatic assistant
    peers: list[ModelConfig] = Field(default_factory=list)  # online: the student's fellow peers (default: one copy)
    data_free: DataFreeConfig = Field(default_factory=DataFreeConfig)
    on_policy: OnPolicyConfig | None = None  # language models: GKD's on-policy batches
    sequence_kd: SequenceKDConfig | None = None  # language models: train on the teacher's generations

    @field_validator("losses")
    @classmethod
    def _not_empty(cls, v: list[LossSpec]) -> list[LossSpec]:
        if not v:
            raise ValueError("needs at least one loss term, e.g. [{name: kd, temperature: 4, alpha: 0.9}]")
        return v

    @field_validator("scheme", mode="before")
    @classmethod
    def _registered(cls, v):
        names = _schemes().scheme_names()
        if not isinstance(v, str) or v not in names:
            raise ValueError("Input should be " + ", ".join(f"'{n}'" for n in names[:-1]) + f" or '{names[-1]}'")
        return v

    @model_validator(mode="after")
    def _scheme_fits(self) -> DistillConfig:
        for scheme in _schemes().schemes():  # each scheme checks its own settings (distill/schemes/)
            scheme.check_section(self, chosen=scheme.name == self.scheme)
        return self


class QuantizeConfig(_Section):
    """Post-training static int8 quantization with ONNX Runtime (QDQ)."""

    enabled: bool = True
    per_channel: bool = True
    calibration_samples: int = Field(4096, ge=1, le=1_000_000)  # capped by the training split's size
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    activation_type: Literal["uint8", "int8", "uint16", "int16"] = "uint8"
    # Agreement with the fp32 student (validation inputs) the int8 model must reach. Below it, ``keep_fp32: auto``
    # keeps the most sensitive layers (Conv / Gemm / MatMul nodes, most sensitive first) in fp32 until it does;
    # a list names the ONNX nodes to keep in fp32; ``none`` keeps every layer quantized.
    # The default is above the report's 99 % flag, so that the test split, which quantization never sees, passes it.
    parity_target: float = Field(0.995, ge=0.0, le=1.0)
    keep_fp32: Literal["auto", "none"] | list[str] = "auto"


class ExportConfig(_Section):
    """Which artifacts to write under ``artifacts/``."""

    onnx: bool = True
    opset: int = Field(18, ge=13)


class GenerateConfig(_Section):
    """Language models: the samples the report shows side by side, continued from the same prompts with the same
    seed by every model (teacher, scratch and distilled students, the int8 artifact)."""

    # Prompts as text; none: the first ``prompt_tokens`` tokens of ``samples`` test blocks.
    prompts: list[str] = Field(default_factory=list, max_length=16)
    samples: int = Field(2, ge=1, le=16)
    prompt_tokens: int = Field(32, ge=1, le=8192)
    max_new_tokens: int = Field(200, ge=1, le=4096)
    temperature: float = Field(0.8, ge=0.0, le=100.0)  # 0: greedy
    top_k: int | None = Field(20, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)


class MeasureConfig(_Section):
    """Latency harness: threads, warm-up, repeats per batch size and the rounds they are interleaved in."""

    threads: int = Field(1, ge=1, le=1024)
    warmup: int = Field(10, ge=0)
    repeats: int = Field(200, ge=5, le=100_000)
    rounds: int = Field(5, ge=1, le=100)  # every variant/runtime is timed once per round, round-robin
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32], max_length=8)
    # text: the token count latency and MACs are measured at (default: the data's max_length)
    sequence_length: int | None = Field(None, ge=1, le=8192)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)  # language models: the report's samples

    @field_validator("batch_sizes")
    @classmethod
    def _has_one(cls, v: list[int]) -> list[int]:
        if 1 not in v or any(b < 1 for b in v):
            raise ValueError("must contain 1 (batch-1 latency is always reported) and only positive sizes")
        if max(v) > MAX_LATENCY_BATCH:
            raise ValueError(f"latency batch sizes go up to {MAX_LATENCY_BATCH} (a batch of random inputs is "
                             "allocated for each)")
        return v


class PruneConfig(_Section):
    """Pruning with knowledge-distillation fine-tuning: ``structured`` removes channels (torch-pruning; MACs and
    latency fall), ``unstructured`` zeroes the smallest weights globally (file size falls once compressed)."""

    method: Literal["structured", "unstructured"] = "structured"
    amount: float | None = Field(0.5, gt=0, lt=1)  # structured: fraction of channels; unstructured: sparsity
    macs_target: int | None = Field(None, ge=1)  # structured only: prune until MACs ≤ this (replaces amount)
    steps: int = Field(1, ge=1)  # prune → fine-tune rounds towards the target
    finetune_epochs: int = Field(2, ge=1)  # per round, with the distillation losses (teacher: KD from itself)
    lr: float = Field(1e-3, gt=0)

    @field_validator("macs_target")
    @classmethod
    def _structured_only(cls, v, info):
        if v is not None and info.data.get("method") == "unstructured":
            raise ValueError("macs_target needs method: structured (unstructured pruning does not remove MACs)")
        return v


class LowRankConfig(_Section):
    """Truncated-SVD factorisation of the student's Linear/Conv layers, then KD fine-tuning."""

    energy: float = Field(0.9, gt=0, le=1)  # fraction of Σσ² each layer keeps
    param_budget: int | None = Field(None, ge=1)  # instead of energy: the student's total parameter budget
    finetune_epochs: int = Field(2, ge=1)
    lr: float = Field(1e-3, gt=0)


class QATConfig(_Section):
    """Quantization-aware distillation (torchao PT2E): fake-quantized int8 student fine-tuned with the KD loss."""

    epochs: int = Field(2, ge=1)
    lr: float = Field(2e-4, gt=0)


class CompressConfig(_Section):
    """Optional compression stages; each adds a variant to the report."""

    prune_teacher: PruneConfig | None = None  # prune the teacher before it teaches
    prune_student: PruneConfig | None = None  # prune the distilled student
    lowrank: LowRankConfig | None = None  # low-rank distilled student
    qat: QATConfig | None = None  # QAT with KD of the distilled student


class DeployConfig(_Section):
    """Edge targets: extra runtimes, the microcontroller fit check and the C array for TensorFlow Lite Micro."""

    target_board: str | dict[str, Any] | None = None  # fail early when the int8 student cannot fit it
    boards: list[str | dict[str, Any]] = Field(
        default_factory=lambda: ["nano33ble", "stm32f746", "stm32h743", "esp32", "pico"])
    fp16: bool = False  # ONNX fp16 student
    dynamic_int8: bool = False  # ONNX dynamic int8 student (Linear-heavy models)
    tflite: bool = False  # TFLite fp32 + full-int8 students (pip install 'tinykd[tflite]')
    executorch: bool = False  # ExecuTorch .pte student, XNNPACK delegate (pip install 'tinykd[executorch]')
    c_array: bool = False  # the int8 .tflite (else the int8 .onnx) as a C header for TFLM projects


class EnergyConfig(_Section):
    """Energy: a per-operation model per inference (always), CodeCarbon for training (optional extra)."""

    track_training: bool = False  # CodeCarbon offline tracker around each training stage
    country: str = "USA"  # ISO 3166 alpha-3 code of the grid's carbon intensity
    memory: Literal["sram_8kb", "sram_32kb", "sram_1mb", "dram_low", "dram_high"] = "sram_1mb"  # where weights/activations live


class ReportConfig(_Section):
    enabled: bool = True


class SearchConfig(_Section):
    """``tinykd search``: an Optuna study over this recipe. ``space`` maps a dotted recipe path, as an override names
    it (``distill.losses.0.temperature``, ``student.kwargs.widths``), to a distribution: ``{float: [low, high]}``,
    ``{int: [low, high]}`` (both may add ``log: true`` or a ``step``) or ``{choice: [a, b, ...]}`` (any YAML values:
    whole lists or loss terms too). ``objectives``: measured metrics, each ``{metric, direction}`` (or a metric's
    name, with its natural direction); ``constraints``: ``board`` (a microcontroller the int8 student must fit) and
    ``max_<metric>`` / ``min_<metric>`` bounds. Metric names, distributions and paths are checked by
    ``tinykd.search.space`` before any trial runs; ``tinykd run`` ignores this section."""

    trials: int = Field(20, ge=1, le=100_000)  # in the whole study, over every worker
    objectives: list[dict[str, Any] | str] = Field(
        default_factory=lambda: [{"metric": "accuracy", "direction": "maximize"}], min_length=1, max_length=8)
    constraints: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Any] = Field(default_factory=dict)
    # None: a journal file in the search folder; else an SQLAlchemy URL (sqlite:///study.db, postgresql://...)
    storage: str | None = None
    sampler: Literal["auto", "tpe", "nsga2", "random"] = "auto"  # auto: TPE for one objective, NSGA-II for several
    pruning: bool = False  # one objective: stop trials whose validation accuracy per epoch falls behind (median)
    baseline: bool = True  # the recipe's own values as the study's first trial, when the space holds them
    seed: int | None = Field(None, ge=0, le=MAX_SEED)  # of the sampler (default: the recipe's seed)

    @field_validator("objectives", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, (dict, str)) else v


class TrackingConfig(_Section):
    """Optional experiment tracking (``tinykd.tracking``): every epoch, the final metrics and the run's files to
    MLflow and/or TensorBoard, by default inside the run folder."""

    mlflow: bool = False
    mlflow_uri: str | None = None  # default: sqlite:///<run>/mlflow/mlflow.db
    experiment: str | None = None  # default: the recipe's name
    tensorboard: bool = False  # event files in <run>/tensorboard


class Recipe(_Section):
    """Every setting of one tinykd run."""

    name: str = "run"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    output_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: ModelConfig = Field(default_factory=ModelConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    energy: EnergyConfig = Field(default_factory=EnergyConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    search: SearchConfig | None = None  # `tinykd search` only
    base_dir: str | None = Field(None, exclude=True)  # folder of the recipe file, for relative paths

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        check_run_name(v)
        return v

    @model_validator(mode="after")
    def _scheme_fits(self) -> Recipe:
        _schemes().get_scheme(self.distill.scheme).check_recipe(self)  # checks across sections (data_free: compress)
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _schemes():
    """The scheme registry. Imported when a recipe is validated, not when this module is: the schemes' modules
    import the recipe's config classes, the registry module itself nothing."""
    from .distill.schemes import registry

    return registry


def check_run_name(name: str) -> None:
    """A run's name is one folder under output_dir: no path separators, not '.' or '..', not empty."""
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError("must be a plain folder name (no '/', '\\', '..'), the run's folder under output_dir")


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _section_model(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for suggesting a key)."""
    model: type[BaseModel] | None = Recipe
    for part in loc[:-1]:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def _explain(err: ValidationError, source: str) -> RecipeError:
    lines = []
    for e in err.errors():
        where = _loc(e["loc"])
        if e["type"] == "extra_forbidden":
            owner = _section_model(e["loc"])
            key = str(e["loc"][-1])
            valid = sorted(k for k in (owner.model_fields if owner else {}) if k != "base_dir")
            guess = closest(key, valid)
            hint = f"did you mean '{guess}'? " if guess else ""
            lines.append(f"{where}: unknown key '{key}' ({hint}valid keys: {', '.join(valid)})")
        elif e["type"] == "missing":
            lines.append(f"{where}: required field is missing")
        else:
            got = e.get("input")
            msg = e["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's own message
            lines.append(f"{where}: {msg} (got {short_repr(got)})")
    return RecipeError(f"invalid recipe {source}:\n  " + "\n  ".join(lines),
                       "edit the recipe (or the override) at the field named above")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a", "b", "c"], value parsed as YAML, so 3 → int, [1,2] → list)."""
    if "=" not in text:
        raise RecipeError(f"override '{text}' has no '='", "write overrides as key.path=value, e.g. student.train.epochs=3")
    key, _, raw = text.partition("=")
    if not key.strip():
        raise RecipeError(f"override '{text}' has an empty key", "write overrides as key.path=value")
    value = load_yaml(raw, f"override '{short_repr(text)[1:-1]}': its value") if raw.strip() else None
    return key.strip().split("."), value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    """Set ``data[path...] = value``, creating sections; list items are addressed by index."""
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            idx = _index(part, node, path[: i + 1])
            node = node[idx]
            continue
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise RecipeError(f"override {'.'.join(path)}: '{'.'.join(path[: i + 1])}' is a value, not a section",
                              "override the value itself, not a key below it")
    last = path[-1]
    if isinstance(node, list):
        node[_index(last, node, path)] = value
    else:
        node[last] = value


def _index(part: str, node: list, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"override {'.'.join(path)}: '{part}' is not an index of a list of {len(node)} items",
                          f"use an index from 0 to {len(node) - 1}")
    return int(part)


MAX_RECIPE_BYTES = 1 << 20


def read_recipe_text(path: Path) -> str:
    """The text of a recipe file: UTF-8 (a BOM is allowed), at most 1 MiB."""
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(f"recipe '{path}' is {path.stat().st_size:,} bytes; a recipe is at most "
                              f"{MAX_RECIPE_BYTES:,}", "pass the YAML recipe, not a data file")
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"recipe '{path}' cannot be read ({exc.strerror or exc})",
                          "check the file's permissions") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise RecipeError(f"recipe '{path}' is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line})",
                          "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None


def _validate(data: dict, name: str) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise _explain(err, name) from None


def load_recipe(source: str | Path | dict | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """A validated Recipe from a YAML file, a dict, or None (the defaults), with dotted overrides applied."""
    base_dir = None
    name = "defaults"
    if source is None:
        data: dict = {}
    elif isinstance(source, dict):
        data, name = dict(source), "given as a dict"
    else:
        path = Path(source)
        if path.is_dir():
            hint = (f"to continue that run: tinykd run --resume {path}" if (path / "recipe.yaml").is_file()
                    else "pass the path of a YAML recipe file, e.g. recipes/mnist.yaml")
            raise RecipeError(f"recipe '{path}' is a folder, not a recipe file", hint)
        if not path.is_file():
            raise RecipeError(f"recipe file '{path}' does not exist",
                              "pass the path of a YAML recipe, e.g. recipes/mnist.yaml (see `ls recipes/`)")
        data = load_yaml(read_recipe_text(path), f"recipe '{path}'")
        if data is None:
            raise RecipeError(f"recipe '{path}' is empty (no settings, only blanks or comments)",
                              "write the recipe's sections (name:, data:, teacher:, student:, ...), or run "
                              "`tinykd run` without a recipe for the bundled default")
        if not isinstance(data, dict):
            raise RecipeError(f"recipe '{path}' must be a mapping of sections, got {type(data).__name__}",
                              "start the file with keys such as 'name:', 'data:', 'teacher:', 'student:'")
        base_dir, name = str(path.resolve().parent), f"'{path}'"
    recipe = _validate(data, name)
    if overrides:
        # Overrides address the resolved recipe, so defaults (e.g. distill.losses.0) can be overridden too.
        resolved = recipe.model_dump(mode="json")
        for text in overrides:
            apply_override(resolved, *parse_override(text))
        count = f"{len(overrides)} override{'s' if len(overrides) > 1 else ''}"
        recipe = _validate(resolved, f"{name} with {count}")  # the lines below name each field
    return recipe.model_copy(update={"base_dir": base_dir})


def default_recipe_path() -> Path:
    """The bundled default recipe, what ``tinykd run`` and ``tinykd.run()`` use when given none."""
    return Path(__file__).parent / "recipes" / "default.yaml"
