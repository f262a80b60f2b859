"""Transformer-encoder terms: TinyBERT, MiniLM, MiniLMv2 and DistilBERT's cosine loss.

Each term finds the BERT-style encoder of both models in ``setup`` (a ModuleList at ``….encoder.layer`` whose
blocks hold ``attention.self.query/key/value``, the ``….embeddings`` beside it: ``transformer``, ``hf:`` BERT and
RoBERTa folders) and captures what it needs by path: the embeddings' output, a block's output (its hidden states)
and the query/key/value Linear outputs, from which it computes the attention itself (eager or fused kernels alike).
Every value is reduced over real tokens only (``Outputs.mask``): padded keys and queries change nothing.

Recipes (the prediction layer is the ``kd`` term; TinyBERT's soft cross-entropy differs from its KL by the teacher's
entropy, a constant, so the gradients are the same):

* TinyBERT task distillation, two steps: intermediate layers alone for 10 epochs, then the prediction layer alone::

    losses:
      - {name: tinybert, until_epoch: 10}     # embedding + attention + hidden MSE, epochs 1-10, off after
      - {name: kd, temperature: 1.0, alpha: 1.0}   # trains alone from epoch 11 (0 before)

  Without ``until_epoch`` the terms train together every epoch (one step).
* MiniLM (any student depth and width, equal heads): ``[{name: minilm}, {name: kd, alpha: 0.5}]``;
  MiniLMv2 (any heads): ``[{name: minilm_v2, relation_heads: 4}, {name: kd, alpha: 0.5}]``.
* DistilBERT (student.init_layers: every_other, the teacher's width): soft CE + hard CE + cosine, with the paper's
  code's weights 5 : 2 : 1::

    losses:
      - {name: kd, temperature: 2.0, alpha: 1.0, weight: 5.0}
      - {name: ce, weight: 2.0}
      - {name: distilbert_cosine, weight: 1.0}
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeInt, model_validator
from torch import nn

from ...errors import TinyKDError
from ...types import Batch, Outputs
from .base import LossTerm, Params, SetupContext, register_loss, token_mean

TOKEN_MODELS = "transformer, transformer_small, transformer_tiny or an hf:PATH BERT"


# ----- where the encoder is ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoder:
    """A BERT-style encoder inside a model: the paths of its embeddings and blocks, and its attention's shape."""

    embeddings: str
    blocks: tuple[str, ...]  # one path per Transformer block, first to last
    heads: int
    hidden: int  # width of the hidden states

    def projection(self, i: int, which: str) -> str:
        """Path of block ``i``'s ``query``, ``key`` or ``value`` Linear (its output: the heads concatenated)."""
        return f"{self.blocks[i]}.attention.self.{which}"


def find_encoder(model: nn.Module | None, role: str, term: str) -> Encoder:
    """The encoder of ``model`` (the student or the teacher); a TinyKDError naming what is missing otherwise."""
    if model is None:
        raise TinyKDError(f"{term}: the {role} is missing", f"{term} needs a teacher model in the loop (offline scheme)")
    modules = dict(model.named_modules())
    stack = next((n for n, m in modules.items() if n.endswith("encoder.layer") and isinstance(m, nn.ModuleList)
                  and len(m)), None)
    attention = modules.get(f"{stack}.0.attention.self") if stack else None
    embeddings = stack.removesuffix("encoder.layer") + "embeddings" if stack else ""
    linear = attention is not None and all(isinstance(getattr(attention, n, None), nn.Linear)
                                           for n in ("query", "key", "value"))
    if not linear or embeddings not in modules:
        raise TinyKDError(f"{term}: the {role} ({type(model).__name__}) has no BERT-style encoder (a ModuleList "
                          "'….encoder.layer' of blocks with attention.self.query/key/value and '….embeddings' "
                          "beside it)", f"use a token model ({TOKEN_MODELS}) for the {role}, or a feature term "
                          "(hidden_mse, hidden_cosine) with explicit layer paths")
    heads = getattr(attention, "num_attention_heads", None) or attention.config.num_attention_heads
    return Encoder(embeddings, tuple(f"{stack}.{i}" for i in range(len(modules[stack]))), int(heads),
                   attention.query.in_features)


# ----- attention, relations and masked means -----------------------------------------------------------------------
def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads·d) concatenated heads -> (B, heads, L, d)."""
    b, n, width = x.shape
    return x.view(b, n, heads, width // heads).transpose(1, 2)


def scaled_dot(a: torch.Tensor, b: torch.Tensor, heads: int) -> torch.Tensor:
    """a_i · b_j / sqrt(d) of each of ``heads`` heads: (B, L, heads·d) twice -> (B, heads, L, L).
    With a = Q, b = K these are the attention scores before the softmax."""
    a, b = split_heads(a, heads), split_heads(b, heads)
    return a @ b.transpose(-1, -2) / math.sqrt(a.shape[-1])


def token_mask(outputs: Outputs, batch: Batch, like: torch.Tensor) -> torch.Tensor:
    """(B, L) 1.0 on real tokens, 0.0 on padding; all ones for a batch without a padding mask."""
    mask = outputs.mask if outputs.mask is not None else batch.mask
    return like.new_ones(like.shape[:2]) if mask is None else mask.to(like.dtype)


def score_mse(a_s: torch.Tensor, a_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (a_s − a_t)² over every head's (query, key) pairs of real tokens; scores (B, H, L, L)."""
    pairs = (mask[:, :, None] * mask[:, None, :]).unsqueeze(1) > 0  # (B, 1, L, L)
    return torch.where(pairs, (a_s - a_t).pow(2), 0.0).sum() / (pairs.sum() * a_s.shape[1]).clamp_min(1)


def relation_kl(r_s: torch.Tensor, r_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(softmax(r_t) ‖ softmax(r_s)) of each query row over the real keys, averaged over the real query
    positions, the heads and the batch; scaled dot products (B, H, L, L)."""
    keys = mask[:, None, None, :] > 0  # (B, 1, 1, L)
    keys = keys | ~keys.any(-1, keepdim=True)  # a sample without tokens (none in practice) stays finite
    log_p_t = r_t.masked_fill(~keys, -math.inf).log_softmax(-1)
    p_t = log_p_t.exp()  # 0 on padded keys
    log_p_t = log_p_t.masked_fill(~keys, 0.0)
    log_p_s = r_s.masked_fill(~keys, -math.inf).log_softmax(-1).masked_fill(~keys, 0.0)
    kl = (p_t * (log_p_t - log_p_s)).sum(-1)  # (B, H, L): one value per query
    queries = (mask > 0)[:, None, :].expand_as(kl)
    return torch.where(queries, kl, 0.0).sum() / queries.sum().clamp_min(1)


def projection(s_width: int, t_width: int) -> nn.Module:
    """A learned W (student width -> teacher width), or the identity when the widths agree."""
    return nn.Identity() if s_width == t_width else nn.Linear(s_width, t_width)


# ----- TinyBERT ----------------------------------------------------------------------------------------------------
class TinyBERTParams(Params):
    attention: float = Field(1.0, ge=0.0)  # weight of the attention-score MSE (Eq. 7)
    hidden: float = Field(1.0, ge=0.0)  # weight of the hidden-state MSE through W_h (Eq. 8)
    embedding: float = Field(1.0, ge=0.0)  # weight of the embedding MSE through W_e (Eq. 9)
    # The teacher block (0-based) each student block learns from; default uniform: student i <- teacher i·k + k − 1.
    layer_map: list[NonNegativeInt] | None = Field(None, min_length=1)
    # Two-step task distillation: this term trains alone up to this epoch, then switches off (the other terms,
    # the prediction layer's kd, train alone afterwards). None: it trains with the other terms every epoch.
    until_epoch: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _something_to_learn(self):
        if self.attention == self.hidden == self.embedding == 0:
            raise ValueError("attention, hidden and embedding are all 0: give at least one a weight")
        return self


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """TinyBERT's uniform map g(m) = m·N/M (1-based, m = 1..M) in 0-based block indices: student block i learns
    from teacher block i·k + k − 1, k = N / M (rounded down where N is not a multiple of M)."""
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


@register_loss
class TinyBERT(LossTerm):
    """λ_a Σ_m MSE(A_m^S, A_g(m)^T) + λ_h Σ_m MSE(H_m^S W_h, H_g(m)^T) + λ_e MSE(E^S W_e, E^T).

    A = QKᵀ/√d_head are the pre-softmax attention scores of each head (the paper fits them rather than their
    softmax), computed from the captured query/key Linear outputs; the MSE is the mean over heads and the (query,
    key) pairs of real tokens. H is a block's output, E the embeddings' output, each MSE the mean over real tokens
    and dimensions; W_h (one for all blocks) and W_e are learned Linear maps from the student's width to the
    teacher's, the identity when the widths agree. Blocks are summed over the layer map. The attention loss
    compares head by head: the head counts must agree (or weight it 0; MiniLMv2 has no such restriction).

    The prediction layer is the ``kd`` term. The paper's two-step task distillation is ``until_epoch: N``: this
    term trains alone for epochs 1..N (the others log 0), then switches off and the other terms train alone::

        losses: [{name: tinybert, until_epoch: 10}, {name: kd, temperature: 1.0, alpha: 1.0}]
    """

    name = "tinybert"
    description = ("TinyBERT intermediate layers: attention-score, hidden-state and embedding MSE over a layer map; "
                   "until_epoch for the two-step schedule (then kd alone)")
    paper = "Jiao et al. 2020, TinyBERT: Distilling BERT for Natural Language Understanding (Findings of EMNLP), §3.1"
    Params = TinyBERTParams
    token_models_only: ClassVar[bool] = True  # reads a BERT-style encoder: checks on other models skip it

    def __init__(self, params: TinyBERTParams):
        super().__init__(params)
        self.layer_map: list[int] = []
        self.hidden_projection: nn.Module = nn.Identity()  # W_h
        self.embedding_projection: nn.Module = nn.Identity()  # W_e
        self.encoders: tuple[Encoder, Encoder] | None = None
        # While True the trainer trains with this term alone (step 1); before the first epoch counts as step 1.
        self.exclusive = params.until_epoch is not None
        self.off = False  # step 2: the term has switched off

    def setup(self, ctx: SetupContext) -> None:
        p = self.params
        s, t = find_encoder(ctx.student, "student", self.name), find_encoder(ctx.teacher, "teacher", self.name)
        m, n = len(s.blocks), len(t.blocks)
        if p.layer_map is None and n < m:
            raise TinyKDError(f"tinybert: the student has {m} layers and the teacher {n}; the uniform layer map needs "
                              "a teacher at least as deep", f"give layer_map: a teacher layer (0 to {n - 1}) for each "
                              f"of the {m} student layers")
        layer_map = uniform_layer_map(m, n) if p.layer_map is None else list(p.layer_map)
        if len(layer_map) != m or max(layer_map) >= n:
            raise TinyKDError(f"tinybert: layer_map {layer_map} does not fit: the student has {m} layers and the "
                              f"teacher {n}", f"give {m} teacher layer indices from 0 to {n - 1}, e.g. "
                              f"{uniform_layer_map(m, n) if n >= m else [n - 1] * m}")
        if p.attention > 0 and s.heads != t.heads:
            raise TinyKDError(f"tinybert: the student has {s.heads} attention heads and the teacher {t.heads}; "
                              "TinyBERT's attention loss compares the attention scores head by head",
                              "use minilm_v2 (relation heads need no equal head counts), give both models the same "
                              "heads, or set attention: 0")
        self.encoders, self.layer_map = (s, t), layer_map
        self.hidden_projection = projection(s.hidden, t.hidden) if p.hidden > 0 else nn.Identity()
        self.embedding_projection = projection(s.hidden, t.hidden) if p.embedding > 0 else nn.Identity()
        self.student_paths = self._paths(s, range(m))
        self.teacher_paths = self._paths(t, layer_map)

    def _paths(self, enc: Encoder, blocks) -> tuple[str, ...]:
        p = self.params
        paths = [enc.embeddings] if p.embedding > 0 else []
        for i in blocks:
            paths += [enc.blocks[i]] if p.hidden > 0 else []
            paths += [enc.projection(i, "query"), enc.projection(i, "key")] if p.attention > 0 else []
        return tuple(dict.fromkeys(paths))

    def start_epoch(self, epoch: int, epochs: int) -> None:
        if self.params.until_epoch is not None:
            self.exclusive = epoch <= self.params.until_epoch
            self.off = not self.exclusive

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        if self.encoders is None:
            raise RuntimeError(f"{self.name}: setup() must run before the term is called")
        p, (s, t) = self.params, self.encoders
        names = [k for k in ("attention", "hidden", "embedding") if getattr(p, k) > 0]
        if self.off:  # step 2 of the two-step schedule: the prediction layer trains alone
            self.parts = {k: student.logits.new_zeros(()) for k in names}
            return student.logits.sum() * 0.0
        fs, ft = student.features, {k: v.detach() for k, v in teacher.features.items()}
        mask = token_mask(student, batch, fs[self.student_paths[0]])
        values = {}
        if p.attention > 0:
            values["attention"] = sum(
                score_mse(scaled_dot(fs[s.projection(i, "query")], fs[s.projection(i, "key")], s.heads),
                          scaled_dot(ft[t.projection(j, "query")], ft[t.projection(j, "key")], t.heads), mask)
                for i, j in enumerate(self.layer_map))
        if p.hidden > 0:
            values["hidden"] = sum(
                token_mean((self.hidden_projection(fs[s.blocks[i]]) - ft[t.blocks[j]]).pow(2).mean(-1), mask)
                for i, j in enumerate(self.layer_map))
        if p.embedding > 0:
            values["embedding"] = token_mean(
                (self.embedding_projection(fs[s.embeddings]) - ft[t.embeddings]).pow(2).mean(-1), mask)
        self.parts = {k: v.detach() for k, v in values.items()}
        return sum(getattr(p, k) * v for k, v in values.items())


# ----- MiniLM and MiniLMv2 -----------------------------------------------------------------------------------------
class MiniLMParams(Params):
    attention: float = Field(1.0, ge=0.0)  # weight of the attention-distribution transfer (L_AT)
    value: float = Field(1.0, ge=0.0)  # weight of the value-relation transfer (L_VR)

    @model_validator(mode="after")
    def _something_to_learn(self):
        if self.attention == self.value == 0:
            raise ValueError("attention and value are both 0: give at least one a weight")
        return self


@register_loss
class MiniLM(LossTerm):
    """λ_a L_AT + λ_v L_VR on the last block of both models (any depths and widths, equal head counts).

    L_AT = KL(softmax(Q_T K_Tᵀ/√d_T) ‖ softmax(Q_S K_Sᵀ/√d_S)) and L_VR = KL(softmax(V_T V_Tᵀ/√d_T) ‖
    softmax(V_S V_Sᵀ/√d_S)), each d the model's own head width; every KL is taken per head and query over the
    real keys, then averaged over the real query positions, the heads and the batch. For a classifier, add the
    prediction layer: ``losses: [{name: minilm}, {name: kd, alpha: 0.5}]``.
    """

    name = "minilm"
    description = "MiniLM deep self-attention distillation: last-layer attention distributions + value relations (KL)"
    paper = ("Wang et al. 2020, MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of "
             "Pre-Trained Transformers (NeurIPS), §3.1")
    Params = MiniLMParams
    token_models_only: ClassVar[bool] = True

    def __init__(self, params: Params):
        super().__init__(params)
        self.encoders: tuple[Encoder, Encoder] | None = None
        self.blocks: tuple[int, int] = (-1, -1)  # (student, teacher) block compared

    def setup(self, ctx: SetupContext) -> None:
        s, t = find_encoder(ctx.student, "student", self.name), find_encoder(ctx.teacher, "teacher", self.name)
        self.check(s, t)
        self.encoders = (s, t)
        self.blocks = (len(s.blocks) - 1, self.teacher_block(t))
        self.student_paths = tuple(s.projection(self.blocks[0], w) for w in self.captured())
        self.teacher_paths = tuple(t.projection(self.blocks[1], w) for w in self.captured())

    def check(self, s: Encoder, t: Encoder) -> None:
        if s.heads != t.heads:
            raise TinyKDError(f"minilm: the student has {s.heads} attention heads and the teacher {t.heads}; MiniLM "
                              "transfers each head's attention distribution to the same head of the student",
                              "use minilm_v2, whose relation heads split the concatenated queries, keys and values "
                              "into any count, or give both models the same heads")

    def teacher_block(self, t: Encoder) -> int:
        return len(t.blocks) - 1

    def captured(self) -> tuple[str, ...]:
        p = self.params
        return (("query", "key") if p.attention > 0 else ()) + (("value",) if p.value > 0 else ())

    def qkv(self, student: Outputs, teacher: Outputs) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The compared blocks' captured (B, L, width) projections by name, the teacher's detached."""
        if self.encoders is None:
            raise RuntimeError(f"{self.name}: setup() must run before the term is called")
        (s, t), (i, j) = self.encoders, self.blocks
        return ({w: student.features[s.projection(i, w)] for w in self.captured()},
                {w: teacher.features[t.projection(j, w)].detach() for w in self.captured()})

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        fs, ft = self.qkv(student, teacher)
        (s, t), p = self.encoders, self.params
        mask = token_mask(student, batch, next(iter(fs.values())))
        values = {}
        if p.attention > 0:
            values["attention"] = relation_kl(scaled_dot(fs["query"], fs["key"], s.heads),
                                              scaled_dot(ft["query"], ft["key"], t.heads), mask)
        if p.value > 0:
            values["value"] = relation_kl(scaled_dot(fs["value"], fs["value"], s.heads),
                                          scaled_dot(ft["value"], ft["value"], t.heads), mask)
        self.parts = {k: v.detach() for k, v in values.items()}
        return sum(getattr(p, k) * v for k, v in values.items())


class MiniLMv2Params(Params):
    # Heads the concatenated Q, K and V of both models are split into (default: the teacher's attention heads);
    # it must divide both models' widths.
    relation_heads: int | None = Field(None, ge=1)
    teacher_layer: NonNegativeInt | None = None  # the teacher block (0-based) taught from; default its last
    # The relations transferred: Q-Q, K-K and V-V by default (the paper's choice for BERT students).
    relations: tuple[Literal["query", "key", "value"], ...] = Field(("query", "key", "value"), min_length=1)

    @model_validator(mode="after")
    def _distinct_relations(self):
        if len(set(self.relations)) != len(self.relations):
            raise ValueError(f"relations names one of query, key, value twice (got {list(self.relations)})")
        return self


@register_loss
class MiniLMv2(MiniLM):
    """Σ_{X ∈ Q, K, V} KL(softmax(X_T,r X_T,rᵀ/√d_r) ‖ softmax(X_S,r X_S,rᵀ/√d_r)) over relation heads r.

    The concatenated heads X (B, L, width) of each model are split into ``relation_heads`` heads of width/R each,
    so the two models' attention head counts need not agree; each KL is taken per relation head and query over
    the real keys and averaged over the real query positions, the relation heads and the batch. The student's
    last block learns from the teacher's ``teacher_layer`` (the paper takes an upper-middle one of large teachers).
    """

    name = "minilm_v2"
    description = ("MiniLMv2 multi-head self-attention relations Q-Q, K-K, V-V (KL) of the last student layer; any "
                   "head counts (relation_heads), teacher_layer")
    paper = ("Wang et al. 2021, MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing Pretrained "
             "Transformers (Findings of ACL), §3")
    Params = MiniLMv2Params

    def check(self, s: Encoder, t: Encoder) -> None:
        r = self.relation_heads(t)
        if s.hidden % r or t.hidden % r:
            fits = [k for k in range(1, min(s.hidden, t.hidden) + 1) if s.hidden % k == 0 and t.hidden % k == 0]
            raise TinyKDError(f"minilm_v2: {r} relation heads do not divide the student's width {s.hidden} and the "
                              f"teacher's {t.hidden}", f"set relation_heads to one of {fits[-8:]}")

    def relation_heads(self, t: Encoder) -> int:
        return self.params.relation_heads or t.heads

    def teacher_block(self, t: Encoder) -> int:
        layer = self.params.teacher_layer
        if layer is not None and layer >= len(t.blocks):
            raise TinyKDError(f"minilm_v2: teacher_layer {layer} is out of range: the teacher has {len(t.blocks)} "
                              "layers", f"give 0 to {len(t.blocks) - 1}, or leave it out for the last")
        return len(t.blocks) - 1 if layer is None else layer

    def captured(self) -> tuple[str, ...]:
        return tuple(self.params.relations)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        fs, ft = self.qkv(student, teacher)
        r = self.relation_heads(self.encoders[1])
        mask = token_mask(student, batch, next(iter(fs.values())))
        values = {w: relation_kl(scaled_dot(fs[w], fs[w], r), scaled_dot(ft[w], ft[w], r), mask) for w in fs}
        self.parts = {w: v.detach() for w, v in values.items()}
        return sum(values.values())


# ----- DistilBERT --------------------------------------------------------------------------------------------------
@register_loss
class DistilBERTCosine(LossTerm):
    """Mean over real tokens of 1 − cos(h_S, h_T), h the last block's hidden states of each model (same width).

    DistilBERT's L_cos (the cosine embedding loss with target 1), which aligns the directions of the two models'
    hidden states; its total loss adds the soft cross-entropy (the ``kd`` term) and the hard one (``ce``). The
    student is usually initialised from the teacher (``student.init_layers``), hence the equal widths::

        student: {model: transformer, kwargs: {layers: 2, ...the teacher's width}, init_layers: every_other}
        distill:
          losses: [{name: kd, temperature: 2.0, alpha: 1.0, weight: 5.0}, {name: ce, weight: 2.0},
                   {name: distilbert_cosine, weight: 1.0}]
    """

    name = "distilbert_cosine"
    description = "DistilBERT cosine embedding loss between the last hidden states (same width), over real tokens"
    paper = "Sanh, Debut, Chaumond & Wolf 2019, DistilBERT, a distilled version of BERT (arXiv:1910.01108), §2-3"
    token_models_only: ClassVar[bool] = True

    def setup(self, ctx: SetupContext) -> None:
        s, t = find_encoder(ctx.student, "student", self.name), find_encoder(ctx.teacher, "teacher", self.name)
        if s.hidden != t.hidden:
            raise TinyKDError(f"distilbert_cosine: the student's hidden states are {s.hidden} wide, the teacher's "
                              f"{t.hidden}; the cosine compares them directly", "give the student the teacher's "
                              "hidden size (as DistilBERT does), or use hidden_cosine, which learns a projection")
        self.student_paths, self.teacher_paths = (s.blocks[-1],), (t.blocks[-1],)

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch) -> torch.Tensor:
        if not self.student_paths:
            raise RuntimeError(f"{self.name}: setup() must run before the term is called")
        h_s = student.features[self.student_paths[0]]
        h_t = teacher.features[self.teacher_paths[0]].detach()
        return token_mean(1.0 - F.cosine_similarity(h_s, h_t, dim=-1), token_mask(student, batch, h_s))
