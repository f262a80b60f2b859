"""The LM top-k teacher cache: what it stores (safetensors shards of float16 log-probabilities and token ids),
what it serves (dense logits whose softmax is the truncated teacher distribution, checked against a float64 loop),
and that a second instance reloads the shards without running the teacher."""
import math

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from torch import nn

from tinykd.data.spec import Split
from tinykd.distill.lm_cache import ZERO_LOGIT, LMTopKCache, lm_collate
from tinykd.distill.losses import build_loss
from tinykd.errors import TrainingError
from tinykd.types import Batch, Outputs

N, T, V = 10, 6, 11
QUIET = Console(quiet=True)


class TinyLM(nn.Module):
    """Logits (B, T, V) from token ids; counts its forward calls."""

    def __init__(self, vocab=V, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed, self.head = nn.Embedding(vocab, 8), nn.Linear(8, vocab)
        with torch.no_grad():
            self.head.weight.mul_(4.0)  # a peaked teacher: the top-k hold most of the mass, not all
        self.calls = 0

    def forward(self, input_ids):
        self.calls += 1
        return self.head(torch.tanh(self.embed(input_ids)))


def _split(n=N, vocab=V, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, T), generator=g)
    lengths = torch.randint(3, T + 1, (n,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    y = torch.where(mask > 0, torch.roll(x, -1, 1), -1)
    y[:, -1] = -1
    return Split(x, y, mask)


def _cache(tmp_path, teacher, k=3, missing_mass="uniform", **kw):
    cache = LMTopKCache(teacher, tmp_path / "cache", k=k, missing_mass=missing_mass, shard_size=4, batch_size=3, **kw)
    cache.prepare(_split(), QUIET)
    return cache


def _served(cache, idx, split=None):
    split = split or _split()
    with cache.open(()) as run:
        return run(lm_collate(split, torch.as_tensor(idx)))


def _truncated_reference(teacher, split, idx, k, missing_mass):
    """The teacher's truncated distribution per position, (len(idx), T, V), by a float64 loop over the tokens."""
    with torch.no_grad():
        logits = teacher(split.x[torch.as_tensor(idx)]).double().numpy()
    out = np.zeros_like(logits)
    for b in range(logits.shape[0]):
        for i in range(T):
            z = logits[b, i]
            p = np.exp(z - z.max())
            p /= p.sum()
            top = sorted(range(V), key=lambda v: -p[v])[:k]
            rest = 1.0 - sum(p[v] for v in top)
            for v in range(V):
                if v in top:
                    out[b, i, v] = p[v] / (1.0 - rest if missing_mass == "zero" else 1.0)
                elif missing_mass == "uniform":
                    out[b, i, v] = rest / (V - k)
    return out


# ----- what is served -----------------------------------------------------------------------------
@pytest.mark.parametrize("missing_mass", ["uniform", "zero"])
def test_served_softmax_is_the_truncated_teacher_distribution(tmp_path, missing_mass):
    teacher = TinyLM().eval()
    cache = _cache(tmp_path, teacher, k=3, missing_mass=missing_mass)
    idx = [7, 0, 4, 9]
    served = _served(cache, idx)
    assert served.logits.shape == (4, T, V) and served.logits.dtype == torch.float32
    expected = _truncated_reference(teacher, _split(), idx, 3, missing_mass)
    got = served.logits.double().softmax(-1).numpy()
    # float16 log-probabilities: a relative error of about |log p| · 2^-11 per probability.
    np.testing.assert_allclose(got, expected, rtol=4e-3, atol=2e-4)
    assert (expected > 0).sum(-1).max() == (3 if missing_mass == "zero" else V)
    if missing_mass == "zero":
        assert (served.logits == ZERO_LOGIT).sum(-1).eq(V - 3).all()
    assert torch.equal(served.mask, lm_collate(_split(), torch.as_tensor(idx)).mask)


def test_stored_values_are_the_teachers_top_k_in_float16(tmp_path):
    teacher = TinyLM().eval()
    cache = _cache(tmp_path, teacher, k=4)
    split = _split()
    with torch.no_grad():
        log_p = teacher(split.x).float().log_softmax(-1)
    top, ids = log_p.topk(4, dim=-1)
    shards = [load_file(cache.shard_path(s)) for s in range(3)]
    stored_lp = torch.cat([s["log_probs"] for s in shards])
    stored_ids = torch.cat([s["ids"] for s in shards])
    assert stored_lp.dtype == torch.float16 and stored_ids.dtype == torch.int16 and stored_lp.shape == (N, T, 4)
    assert torch.equal(stored_lp, top.half()) and torch.equal(stored_ids.long(), ids)


@pytest.mark.parametrize("missing_mass", ["uniform", "zero"])
def test_k_equal_to_the_vocabulary_serves_the_teachers_softmax(tmp_path, missing_mass):
    teacher = TinyLM().eval()
    cache = _cache(tmp_path, teacher, k=V, missing_mass=missing_mass)
    served = _served(cache, range(N))
    with torch.no_grad():
        live = teacher(_split().x).double().softmax(-1)
    torch.testing.assert_close(served.logits.double().softmax(-1), live, rtol=4e-3, atol=1e-5)
    assert cache.bytes_per_token == V * (2 + 2)


@pytest.mark.parametrize("missing_mass", ["uniform", "zero"])
def test_topk_kl_reads_the_same_value_from_the_cache_as_from_the_live_teacher(tmp_path, missing_mass):
    teacher = TinyLM().eval()
    cache = _cache(tmp_path, teacher, k=3, missing_mass=missing_mass)
    batch = lm_collate(_split(), torch.arange(N))
    student = Outputs(torch.randn(N, T, V, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        live = Outputs(teacher(batch.x))
    term = build_loss("topk_kl", {"k": 3, "missing_mass": missing_mass})
    with cache.open(()) as run:
        served = run(batch)
    assert term(student, served, batch).item() == pytest.approx(term(student, live, batch).item(), rel=2e-3)
    # Dense terms see the truncated teacher: forward KL on the served logits is top-k KL on the live ones.
    kd = build_loss("kd", {"alpha": 1.0, "temperature": 1.0})
    assert kd(student, served, batch).item() == pytest.approx(term(student, live, batch).item(), rel=2e-3)


# ----- what is stored, and reloaded ---------------------------------------------------------------
def test_shards_are_safetensors_and_a_new_instance_reloads_them_without_the_teacher(tmp_path):
    teacher = TinyLM().eval()
    cache = _cache(tmp_path, teacher, k=3)
    assert teacher.calls == 2 + 2 + 1 and cache.stats["computed"] == N  # shards of 4, 4, 2 sequences in batches of 3
    files = sorted(p.name for p in cache.folder.iterdir())
    assert files == ["manifest.json", "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    assert [len(load_file(cache.shard_path(s))["ids"]) for s in range(3)] == [4, 4, 2]
    # The store holds k · (2 + 2) bytes per position (plus the small safetensors headers), no N × T × V array.
    assert cache.bytes_per_token == 3 * (2 + 2)
    stored = sum(cache.shard_path(s).stat().st_size for s in range(3))
    assert N * T * cache.bytes_per_token <= stored < N * T * cache.bytes_per_token + 3 * 512
    first = _served(cache, [3, 8, 1])

    again = LMTopKCache(teacher, tmp_path / "cache", k=3, shard_size=4, batch_size=3)
    teacher.calls = 0
    again.prepare(_split(), QUIET)
    second = _served(again, [3, 8, 1])
    assert teacher.calls == 0 and again.stats == {"hits": 3, "computed": 0, "live": 0}
    assert again.folder == cache.folder and torch.equal(first.logits, second.logits)


def test_bytes_per_token_with_int32_ids_for_a_large_vocabulary(tmp_path):
    vocab = 40000
    teacher = TinyLM(vocab).eval()
    cache = LMTopKCache(teacher, tmp_path / "cache", k=5, shard_size=4)
    cache.prepare(_split(6, vocab), QUIET)
    assert cache.bytes_per_token == 5 * (2 + 4) and cache.vocab == vocab
    assert load_file(cache.shard_path(0))["ids"].dtype == torch.int32
    served = _served(cache, [5, 2], _split(6, vocab))
    with torch.no_grad():
        top = teacher(_split(6, vocab).x[[5, 2]]).log_softmax(-1).topk(5, dim=-1).indices
    assert torch.equal(served.logits.topk(5, dim=-1).indices.sort(-1).values, top.sort(-1).values)


def test_an_interrupted_pass_resumes_from_its_shards_and_a_new_k_is_a_new_store(tmp_path):
    teacher = TinyLM().eval()
    cache = _cache(tmp_path, teacher, k=3)
    before = _served(cache, range(N)).logits
    cache.shard_path(1).unlink()
    manifest = cache.folder / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"complete": true', '"complete": false'))
    teacher.calls = 0
    resumed = LMTopKCache(teacher, tmp_path / "cache", k=3, shard_size=4, batch_size=3)
    resumed.prepare(_split(), QUIET)
    assert teacher.calls == 2 and resumed.stats["computed"] == 4  # shard 1 only: 4 sequences, batches of 3
    assert torch.equal(_served(resumed, range(N)).logits, before)
    other = LMTopKCache(teacher, tmp_path / "cache", k=2, shard_size=4)
    other.prepare(_split(), QUIET)
    assert other.folder != cache.folder and not cache.folder.exists()  # the k=3 store is pruned


# ----- live rows, shorter batches, errors ---------------------------------------------------------
def test_rows_without_an_index_run_the_live_teacher_truncated_alike(tmp_path):
    teacher = TinyLM().eval()
    cache = _cache(tmp_path, teacher, k=3)
    split = _split()
    batch = lm_collate(split, torch.tensor([2, 5, 6]))
    changed = Batch(batch.inputs, batch.y, torch.tensor([2, -1, -1]), batch.mask)
    teacher.calls = 0
    with cache.open(()) as run:
        mixed = run(changed)
        stored = run(batch)
    assert teacher.calls == 1 and cache.stats["live"] == 2 and cache.stats["hits"] == 4
    assert torch.equal(mixed.logits, stored.logits)  # the same inputs: the live rows read as the stored ones


def test_a_trimmed_batch_is_served_its_positions(tmp_path):
    teacher = TinyLM().eval()
    cache = _cache(tmp_path, teacher, k=3)
    full = _served(cache, [1, 4]).logits
    batch = lm_collate(_split(), torch.tensor([1, 4]))
    short = Batch({"input_ids": batch.x[:, :4]}, batch.y[:, :4], batch.index, batch.mask[:, :4])
    with cache.open(()) as run:
        assert torch.equal(run(short).logits, full[:, :4])


def test_errors_are_named(tmp_path):
    teacher = TinyLM().eval()
    cache = LMTopKCache(teacher, tmp_path / "cache", k=3)
    with pytest.raises(TrainingError, match=r"used before prepare\(\)"):
        _ = cache.bytes_per_token
    with pytest.raises(TrainingError, match="missing_mass must be 'uniform' or 'zero'"):
        LMTopKCache(teacher, tmp_path / "cache", missing_mass="drop")
    cache.prepare(_split(), QUIET)
    with pytest.raises(TrainingError, match="stores no teacher features"):
        with cache.open(["embed"]):
            pass
    with pytest.raises(TrainingError, match="sequence index 12 is beyond the 10 stored ones"):
        _served(cache, [1, 12], Split(torch.zeros(13, T, dtype=torch.long), torch.zeros(13, T, dtype=torch.long)))
    classifier = LMTopKCache(nn.Linear(T, 4), tmp_path / "c2", k=2)
    with pytest.raises(TrainingError, match=r"needs teacher logits \(B, T, 4\); got \(3, 4\)"):
        classifier.prepare(Split(torch.randn(3, T), torch.zeros(3, dtype=torch.long)), QUIET)
