"""Sparse top-k fusion losses against dense computations built here only, and the methods' losses."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from harness.config import MethodSpec
from harness.registry import available_methods, get_method
from methods.base import FusionBatch, SeqBatch, Signal, SourceTargets
from methods.losses import (
    next_token_ce,
    score_view,
    sparse_cross_entropy,
    sparse_kl,
    teacher_logprobs,
)
from methods.schedules import ScheduleSpec, weights

B, T, V, K = 3, 7, 13, 4
NEG_INF = float("-inf")


def make_view(seed: int = 0, dtype: torch.dtype = torch.float64) -> SeqBatch:
    """A batch with prompts, padding, absent (-inf) teacher entries, a duplicate id and a position with no teacher."""
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, V, (B, T), generator=gen)
    labels = input_ids.clone()
    labels[:, :2] = -100  # prompt
    labels[2, 5:] = -100  # padding of the shorter third row
    mask = (labels != -100).long()
    mask[:, :2] = 1
    topk_ids = torch.randint(0, V, (B, T, K), generator=gen)
    topk_logp = torch.log_softmax(torch.randn(B, T, K + 2, generator=gen, dtype=dtype), -1)[..., :K]  # a top-k: mass < 1
    topk_logp[0, 3, 2:] = NEG_INF  # fewer than k entries after vocabulary mapping
    topk_logp[1, 4, :] = NEG_INF  # no teacher at all for this token
    topk_ids[0, 5, 1] = topk_ids[0, 5, 0]  # the same id twice
    return SeqBatch(input_ids, mask, labels, topk_ids, topk_logp)


def dense_teacher(ids: torch.Tensor, logp: torch.Tensor, tau: float) -> torch.Tensor:
    """[..., V] teacher: probabilities added per id, raised to 1/tau, renormalised over the ids present."""
    mass = torch.zeros(*ids.shape[:-1], V, dtype=torch.float64).scatter_add(-1, ids, logp.double().exp())
    tempered = torch.where(mass > 0, mass.clamp_min(1e-300) ** (1.0 / tau), 0.0)
    return tempered / tempered.sum(-1, keepdim=True).clamp_min(1e-300)


def dense_reference(view: SeqBatch, logits: torch.Tensor, tau: float) -> dict[str, torch.Tensor]:
    """Every loss the slow way: explicit shift, dense [B, T-1, V] teacher, dense student log-softmax."""
    log_q = torch.log_softmax(logits[:, :-1].double(), -1)
    labels = view.labels[:, 1:]
    counted = labels != -100
    p = dense_teacher(view.topk_ids[:, 1:], view.topk_logp[:, 1:], tau)
    has_teacher = counted & (p.sum(-1) > 0)
    ce_y = F.cross_entropy(log_q.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    ce_s = -(p * log_q).sum(-1)
    log_p = torch.where(p > 0, p.clamp_min(1e-300).log(), 0.0)
    fwd = (p * (log_p - log_q)).sum(-1)
    z = logits[:, :-1].double()
    z_support = torch.where(p > 0, z, NEG_INF)
    q_support = torch.where(p > 0, torch.softmax(torch.where(has_teacher[..., None], z_support, 0.0), -1), 0.0)
    rev = torch.where(p > 0, q_support * (q_support.clamp_min(1e-300).log() - log_p), 0.0).sum(-1)
    n = has_teacher.sum()
    return {
        "ce_y": ce_y,
        "ce_s": ce_s[has_teacher].sum() / n,
        "kl_forward": fwd[has_teacher].sum() / n,
        "kl_reverse": rev[has_teacher].sum() / n,
    }


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_sparse_losses_equal_dense_computations(tau: float) -> None:
    view = make_view()
    logits = torch.randn(B, T, V, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = dense_reference(view, logits, tau)
    s = score_view(view, logits)
    torch.testing.assert_close(next_token_ce(s), ref["ce_y"])
    torch.testing.assert_close(sparse_cross_entropy(s, tau), ref["ce_s"])
    torch.testing.assert_close(sparse_kl(s, tau, "forward"), ref["kl_forward"])
    torch.testing.assert_close(sparse_kl(s, tau, "reverse"), ref["kl_reverse"])
    assert s.n_tokens == int((view.labels[:, 1:] != -100).sum())


def test_teacher_renormalisation_with_temperature_and_duplicates() -> None:
    ids = torch.tensor([[4, 7, 9, 2], [5, 5, 6, 1]])
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.0], [0.2, 0.2, 0.4, 0.1]], dtype=torch.float64)
    logp = probs.log()  # 0.0 -> -inf: an absent entry
    got = teacher_logprobs(ids, logp, temperature=1.0).exp()
    torch.testing.assert_close(got[0], torch.tensor([5 / 9, 3 / 9, 1 / 9, 0.0], dtype=torch.float64))
    torch.testing.assert_close(got[1], torch.tensor([0.4 / 0.9, 0.0, 0.4 / 0.9, 0.1 / 0.9], dtype=torch.float64))
    hot = teacher_logprobs(ids, logp, temperature=2.0).exp()[0]
    roots = torch.tensor([0.5, 0.3, 0.1], dtype=torch.float64).sqrt()
    torch.testing.assert_close(hot[:3], roots / roots.sum())
    cold = teacher_logprobs(ids, logp, temperature=0.25).exp()[0]
    assert cold[0].item() == pytest.approx(0.5**4 / (0.5**4 + 0.3**4 + 0.1**4))  # sharper than 5/9
    assert teacher_logprobs(ids, torch.full_like(logp, NEG_INF)).isneginf().all()  # nothing present: nothing kept


def test_only_counted_positions_matter() -> None:
    view = make_view()
    logits = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    s = score_view(view, logits)
    total = next_token_ce(s) + sparse_cross_entropy(s) + sparse_kl(s) + sparse_kl(s, direction="reverse")
    total.backward()
    # row i predicts token i+1: rows whose next token is prompt or padding (and the last row) get no gradient
    predicts_counted = torch.zeros(B, T, dtype=torch.bool)
    predicts_counted[:, :-1] = view.labels[:, 1:] != -100
    assert (logits.grad[~predicts_counted] == 0).all()
    assert (logits.grad[predicts_counted].abs().sum(-1) > 0).all()
    # the teacher and labels at uncounted positions are never read
    changed = SeqBatch(view.input_ids, view.attention_mask, view.labels, view.topk_ids.clone(), view.topk_logp.clone())
    changed.topk_logp[:, :2] = 0.0
    changed.topk_ids[2, 5:] = 0
    s2 = score_view(changed, logits.detach())
    torch.testing.assert_close(sparse_cross_entropy(s2), sparse_cross_entropy(score_view(view, logits.detach())))


def test_absent_entries_and_empty_batches_give_no_nan() -> None:
    view = make_view()
    view.topk_logp[:] = NEG_INF  # no teacher anywhere
    logits = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    s = score_view(view, logits)
    terms = [sparse_cross_entropy(s), sparse_kl(s), sparse_kl(s, direction="reverse")]
    assert all(t.item() == 0.0 for t in terms)
    sum(terms).backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()

    prompt_only = SeqBatch(view.input_ids, view.attention_mask, torch.full_like(view.labels, -100), view.topk_ids, make_view().topk_logp)
    logits.grad = None
    s = score_view(prompt_only, logits)
    total = next_token_ce(s) + sparse_cross_entropy(s) + sparse_kl(s, direction="reverse")
    assert total.item() == 0.0 and s.n_tokens == 0
    total.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_fusion_terms_gradcheck(direction: str) -> None:
    def terms(view: SeqBatch, z: torch.Tensor) -> torch.Tensor:
        s = score_view(view, z)
        return torch.stack([next_token_ce(s), sparse_cross_entropy(s, 0.7), sparse_kl(s, 1.3, direction)])  # type: ignore[arg-type]

    view = make_view()
    logits = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: terms(view, z), (logits,), fast_mode=True)
    small = SeqBatch(*(None if (x := getattr(view, f.name)) is None else x[:1, :5] for f in fields(SeqBatch)))  # full Jacobian, small
    assert torch.autograd.gradcheck(lambda z: terms(small, z), (logits[:1, :5].detach().clone().requires_grad_(),))


def test_bf16_logits_are_scored_in_float32() -> None:
    view = make_view(dtype=torch.float32)
    logits = torch.randn(B, T, V, dtype=torch.float64)
    s = score_view(view, logits.bfloat16().requires_grad_())
    assert s.label_logq.dtype == s.topk_logq.dtype == torch.float32
    ref = dense_reference(view, logits.bfloat16().double(), 1.0)
    torch.testing.assert_close(sparse_cross_entropy(s).double(), ref["ce_s"], atol=1e-4, rtol=1e-4)
    sparse_cross_entropy(s).backward()


def _batch(seed: int = 0) -> FusionBatch:
    return FusionBatch({Signal.TRAINING: make_view(seed), Signal.INFERENCE: make_view(seed + 1)})


def test_builtin_methods_are_registered_with_their_needs() -> None:
    found = available_methods()
    assert {"profuser", "fusellm", "inference-only", "averaging"} <= set(found)
    assert get_method("profuser").needs == {Signal.TRAINING, Signal.INFERENCE}
    assert get_method("fusellm").needs == get_method("averaging").needs == {Signal.TRAINING}
    assert get_method("inference-only").needs == {Signal.INFERENCE}
    assert all(get_method(n).description and get_method(n).name == n for n in ("profuser", "fusellm", "inference-only", "averaging"))


def test_method_losses_are_their_equations() -> None:
    spec = MethodSpec(lam=0.7, beta=0.5, temperature=1.5)
    batch = _batch()
    logits = {s: torch.randn(B, T, V, dtype=torch.float64, requires_grad=True) for s in Signal}
    train = score_view(batch.views[Signal.TRAINING], logits[Signal.TRAINING])
    infer = score_view(batch.views[Signal.INFERENCE], logits[Signal.INFERENCE])
    ce_y, fuse = next_token_ce(train), sparse_cross_entropy(train, 1.5)
    ce_best, kl = next_token_ce(infer), sparse_kl(infer, 1.5)
    l_train, l_infer = 0.7 * ce_y + 0.3 * fuse, ce_best + 0.5 * kl

    fusellm = get_method("fusellm")(spec).loss(batch, logits, 0, 10)
    torch.testing.assert_close(fusellm.total, l_train)
    assert set(fusellm.components) == {"ce_train", "fuse_train"} and fusellm.weights["lam"] == 0.7

    only = get_method("inference-only")(spec).loss(batch, logits, 0, 10)
    torch.testing.assert_close(only.total, l_infer)
    assert set(only.components) == {"ce_infer", "kl_infer"} and only.weights["beta"] == 0.5

    for name in ("progressive", "simultaneous", "reversed", "linear", "cosine"):
        pf_spec = MethodSpec(lam=0.7, beta=0.5, temperature=1.5, schedule=ScheduleSpec(name=name))  # type: ignore[arg-type]
        method = get_method("profuser")(pf_spec)
        for step in (0, 3, 9):
            w_inf, w_train = weights(pf_spec.schedule, step, 10)
            parts = method.loss(batch, logits, step, 10)
            torch.testing.assert_close(parts.total, w_inf * l_infer + w_train * l_train)
            assert (parts.weights["w_inf"], parts.weights["w_train"]) == (w_inf, w_train)
            assert method.views_at(step, 10) == {v for v, w in ((Signal.INFERENCE, w_inf), (Signal.TRAINING, w_train)) if w > 0}
            assert ("ce_train" in parts.components) == (w_train > 0) and ("kl_infer" in parts.components) == (w_inf > 0)
            assert torch.isfinite(parts.total)
            parts.total.backward()

    reverse = get_method("fusellm")(MethodSpec(kl_direction="reverse")).loss(batch, logits, 0, 10)
    torch.testing.assert_close(reverse.components["fuse_train"], sparse_kl(train, 1.0, "reverse"))


def test_profuser_stage_one_needs_no_training_view() -> None:
    method = get_method("profuser")(MethodSpec())
    batch = _batch()
    only_infer = {Signal.INFERENCE: torch.randn(B, T, V, dtype=torch.float64)}
    parts = method.loss(batch, only_infer, 0, 10)  # progressive stage 1: w_train = 0
    assert set(parts.components) == {"ce_infer", "kl_infer"}


def test_averaging_combines_into_the_uniform_mixture() -> None:
    gen = torch.Generator().manual_seed(5)
    n_tok = 6
    candidates = []
    for name, k in (("a", 3), ("b", 4), ("c", 2)):
        ids = torch.randint(0, 6, (n_tok, k), generator=gen)  # a small range: many ids are shared between sources
        logp = torch.log_softmax(torch.randn(n_tok, k + 1, generator=gen, dtype=torch.float64), -1)[:, :k]
        candidates.append(SourceTargets(name, ce=float(k), topk_ids=ids, topk_logp=logp))
    candidates[2].topk_logp[1, 1] = NEG_INF
    method = get_method("averaging")(MethodSpec())
    mixed = method.combine(candidates)
    assert mixed.topk_ids.shape == (n_tok, 9) and mixed.ce == pytest.approx(3.0)
    expected = sum(dense_teacher(c.topk_ids, c.topk_logp, 1.0) for c in candidates) / 3
    got = dense_teacher(mixed.topk_ids, teacher_logprobs(mixed.topk_ids, mixed.topk_logp), 1.0)
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="different token counts"):
        method.combine([candidates[0], SourceTargets("d", 1.0, candidates[1].topk_ids[:3], candidates[1].topk_logp[:3])])


def test_fusion_term_is_zero_gradient_at_the_teacher() -> None:
    """When the student equals the (renormalised) teacher on its support, the KL is 0 and CE equals H(P_S)."""
    ids = torch.tensor([[[1, 4, 6]]]).expand(1, 2, 3).clone()
    probs = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    logp = probs.log().expand(1, 2, 3).clone()
    view = SeqBatch(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long), torch.tensor([[-100, 4]]), ids, logp)
    logits = torch.full((1, 2, V), -1e4, dtype=torch.float64)
    logits[0, 0, [1, 4, 6]] = probs.log()
    s = score_view(view, logits)
    assert sparse_kl(s).item() == pytest.approx(0.0, abs=1e-9)
    assert sparse_kl(s, direction="reverse").item() == pytest.approx(0.0, abs=1e-9)
    assert sparse_cross_entropy(s).item() == pytest.approx(-(probs * probs.log()).sum().item())
    assert next_token_ce(s).item() == pytest.approx(-math.log(0.3))


def fusellm_weighted_label(
    ces: list[float], topk_logits: list[torch.Tensor], topk_ids: list[torch.Tensor], vocab: int, temperature: float
) -> torch.Tensor:
    """FuseLLM's AvgCE target, as its code computes it (in float64 here, where FuseLLM uses bfloat16):
    DataCollatorForDistill (FuseLLM/src/utils/data_collator.py) scatters softmax(top-k logits / T) of each source
    into the vocabulary; DistillTrainer.compute_loss (FuseLLM/src/utils/trainer.py, `distill_weighted_as_gt`) takes
    rewards 1 / exp(metric_ce), weights softmax(rewards) over the sources, and the weighted sum of the distributions.
    Source: github.com/18907305772/FuseAI, FuseLLM/src/utils at commit 41359744."""
    dists = []
    for logits, ids in zip(topk_logits, topk_ids, strict=True):
        dist = torch.zeros(logits.shape[0], vocab, dtype=torch.float64)
        dists.append(dist.scatter_(-1, ids, torch.softmax(logits / temperature, -1)))
    rewards = torch.stack([1 / torch.exp(torch.tensor(c, dtype=torch.float64)) for c in ces])
    weights = torch.softmax(rewards, dim=0)
    return sum(w * d for w, d in zip(weights, dists, strict=True))  # type: ignore[return-value]


def test_averaging_avgce_is_fusellms_weighted_label() -> None:
    """`weighting: avgce` reproduces FuseLLM's weighted label on the same tensors: rewards exp(-CE), softmax over
    them, each source tempered before mixing (for CEs 1, 2, 0.5 the weights are 0.33 / 0.26 / 0.41, where
    softmax(-CE) would give 0.33 / 0.12 / 0.55)."""
    from methods.averaging import mixture_log_weights

    w = [math.exp(x) for x in mixture_log_weights([1.0, 2.0, 0.5], "avgce")]
    assert [round(x, 2) for x in w] == [0.33, 0.26, 0.41]
    gen = torch.Generator().manual_seed(7)
    n_tok, k, vocab, tau = 5, 4, V, 2.0
    ces = [1.0, 2.0, 0.5]
    logits = [torch.randn(n_tok, vocab, generator=gen, dtype=torch.float64) * 3 for _ in ces]
    top = [lg.topk(k, dim=-1) for lg in logits]  # distinct ids per source, overlapping across sources
    candidates = [
        SourceTargets(name, ce, t.indices, torch.log_softmax(lg, -1).gather(-1, t.indices))  # stored: log-probs
        for name, ce, lg, t in zip("abc", ces, logits, top, strict=True)
    ]
    method = get_method("averaging")(MethodSpec(name="averaging", weighting="avgce", temperature=tau))
    mixed = method.combine(candidates)
    got = dense_teacher(mixed.topk_ids, teacher_logprobs(mixed.topk_ids, mixed.topk_logp), 1.0)
    expected = fusellm_weighted_label(ces, [t.values for t in top], [t.indices for t in top], vocab, tau)
    torch.testing.assert_close(got, expected)
    # the loss does not temper the mixture a second time
    view = SeqBatch(
        torch.zeros(1, n_tok, dtype=torch.long), torch.ones(1, n_tok, dtype=torch.long),
        torch.tensor([[-100] + [1] * (n_tok - 1)]), mixed.topk_ids[None], mixed.topk_logp[None].float(),
    )
    student = torch.randn(1, n_tok, vocab, generator=gen, dtype=torch.float64)
    loss = method.loss(FusionBatch({Signal.TRAINING: view}), {Signal.TRAINING: student}, 0, 1)
    log_q = torch.log_softmax(student[0, :-1], -1)
    direct = -(expected[1:] * log_q).sum(-1).mean()
    torch.testing.assert_close(loss.components["fuse_train"].double(), direct, rtol=1e-5, atol=1e-6)
    # uniform stays the default; equal CEs make AvgCE the uniform mixture; a source that predicted nothing has
    # reward 0 (FuseLLM's rule) and no entries
    assert MethodSpec(name="averaging").weighting == "uniform"
    equal = [SourceTargets(c.source, 1.0, c.topk_ids, c.topk_logp) for c in candidates]
    uniform = get_method("averaging")(MethodSpec(name="averaging", temperature=tau)).combine(equal)
    torch.testing.assert_close(method.combine(equal).topk_logp, uniform.topk_logp)
    assert [round(math.exp(x), 4) for x in mixture_log_weights([math.inf, 0.0], "avgce")] == [0.2689, 0.7311]
