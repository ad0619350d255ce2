"""The chunked smoothed loss head against straightforward full-logits references."""

import pytest
import torch
import torch.nn.functional as F

from ual.loss import default_chunk_size, smoothed_cross_entropy


def reference(hidden, weight, labels, eps, convention, bias=None, scale=1.0, softcap=None, prior=None):
    """Full soft-target cross-entropy: -sum_v q_v log softmax(z)_v, with the convention's q (or (1-eps) onehot +
    eps * prior); z scaled, then soft-capped at softcap * tanh(z / softcap) as Gemma-2's forward writes it (autograd
    differentiates through the tanh)."""
    z = (hidden @ weight.t() + (0 if bias is None else bias)) * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    logp = z.log_softmax(-1)
    vocab = weight.shape[0]
    onehot = F.one_hot(labels, vocab).to(z.dtype)
    if prior is not None:
        q = (1 - eps)[:, None] * onehot + eps[:, None] * prior[None, :]
    elif convention == "uniform":
        q = (1 - eps)[:, None] * onehot + eps[:, None] / vocab
    else:
        q = (1 - eps)[:, None] * onehot + (eps[:, None] / (vocab - 1)) * (1 - onehot)
    return -(q * logp).sum(-1)


def make_inputs(n=53, h=24, v=97, dtype=torch.float64, seed=0, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(v, generator=g, dtype=dtype, requires_grad=True) if bias else None
    labels = torch.randint(0, v, (n,), generator=g)
    # a different eps per sample: 5 samples of uneven length, eps in [0, 0.9]
    sample_of_token = torch.randint(0, 5, (n,), generator=g)
    eps = (torch.rand(5, generator=g, dtype=dtype) * 0.9)[sample_of_token]
    return hidden, weight, b, labels, eps


def upstream_and_token_weight(n, upstream_kind, seed):
    """The upstream gradient (a mean, or random per token) and, for 'weighted' kinds, per-token weights 1/n_i."""
    g = torch.Generator().manual_seed(seed)
    upstream = torch.full((n,), 1 / n, dtype=torch.float64) if upstream_kind.endswith("mean") else \
        torch.randn(n, dtype=torch.float64, generator=g)
    token_weight = 1 / torch.randint(1, 20, (n,), generator=g).to(torch.float64) if "weighted" in upstream_kind else None
    return upstream, token_weight


@pytest.mark.parametrize("convention", ["paper", "uniform"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
@pytest.mark.parametrize("upstream_kind", ["mean", "per-token", "token-weighted mean", "token-weighted per-token"])
def test_values_and_gradients_match_full_logits_reference(convention, bias, chunk_size, upstream_kind):
    """'mean': the trainer's case, gradients formed in the forward; 'per-token': any weighting, recomputed;
    'token-weighted': the head weights each token (sample normalisation, 1/n_i), then the same two upstreams."""
    hidden, weight, b, labels, eps = make_inputs(bias=bias)
    upstream, token_weight = upstream_and_token_weight(labels.shape[0], upstream_kind, seed=7)
    params = [hidden, weight] + ([b] if bias else [])

    out = smoothed_cross_entropy(hidden, weight, labels, eps, convention=convention, bias=b, chunk_size=chunk_size,
                                 token_weight=token_weight)
    grads = torch.autograd.grad((out.loss * upstream).sum(), params)
    ref = reference(hidden, weight, labels, eps, convention, b) * (1 if token_weight is None else token_weight)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), params)

    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def make_prior(v=97, seed=3):
    """A skewed distribution over the vocabulary, like the unigram counts of real targets (Zipf-like, add-one)."""
    counts = torch.randint(0, 50, (v,), generator=torch.Generator().manual_seed(seed)) ** 2
    return (counts + 1).to(torch.float64) / (counts.sum() + v)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
@pytest.mark.parametrize("upstream_kind", ["mean", "per-token", "token-weighted mean"])
def test_prior_smoothing_matches_full_logits_reference(bias, chunk_size, upstream_kind):
    """Smoothing toward a prior pi (unigram): target (1-eps) onehot + eps pi, in both backward paths."""
    hidden, weight, b, labels, eps = make_inputs(bias=bias)
    prior = make_prior()
    upstream, token_weight = upstream_and_token_weight(labels.shape[0], upstream_kind, seed=11)
    params = [hidden, weight] + ([b] if bias else [])
    for convention in ("paper", "uniform"):  # the convention does not apply once a prior is given
        out = smoothed_cross_entropy(hidden, weight, labels, eps, convention=convention, bias=b, chunk_size=chunk_size,
                                     token_weight=token_weight, prior=prior)
        grads = torch.autograd.grad((out.loss * upstream).sum(), params)
        ref = reference(hidden, weight, labels, eps, None, b, prior=prior) * (1 if token_weight is None else token_weight)
        ref_grads = torch.autograd.grad((ref * upstream).sum(), params)
        torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-10)
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_uniform_prior_is_the_uniform_convention_and_a_skewed_one_is_not():
    hidden, weight, _, labels, eps = make_inputs()
    v = weight.shape[0]
    uniform = smoothed_cross_entropy(hidden, weight, labels, eps, convention="uniform").loss
    flat = smoothed_cross_entropy(hidden, weight, labels, eps, prior=torch.full((v,), 1 / v, dtype=torch.float64)).loss
    skewed = smoothed_cross_entropy(hidden, weight, labels, eps, prior=make_prior()).loss
    torch.testing.assert_close(flat, uniform, rtol=1e-12, atol=1e-12)
    assert (skewed - uniform).abs().max() > 1e-3
    with pytest.raises(ValueError, match="prior must be"):
        smoothed_cross_entropy(hidden, weight, labels, eps, prior=torch.ones(v + 1) / (v + 1))


def test_metrics_match_full_logits():
    hidden, weight, _, labels, eps = make_inputs()
    out = smoothed_cross_entropy(hidden, weight, labels, eps, chunk_size=5)
    z = (hidden @ weight.t()).detach()
    logp = z.log_softmax(-1)
    torch.testing.assert_close(out.entropy, -(logp.exp() * logp).sum(-1))
    assert torch.equal(out.is_top1, z.argmax(-1) == labels)


def test_zero_smoothing_is_the_nll():
    hidden, weight, _, labels, _ = make_inputs()
    out = smoothed_cross_entropy(hidden, weight, labels, torch.zeros(labels.shape, dtype=torch.float64))
    torch.testing.assert_close(out.loss, F.cross_entropy(hidden @ weight.t(), labels, reduction="none"))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
def test_constant_uniform_equals_torch_label_smoothing(eps):
    hidden, weight, _, labels, _ = make_inputs(dtype=torch.float32)
    out = smoothed_cross_entropy(
        hidden, weight, labels, torch.full(labels.shape, eps), convention="uniform", chunk_size=8
    )
    want = F.cross_entropy(hidden @ weight.t(), labels, label_smoothing=eps, reduction="none")
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad(out.loss.sum(), [hidden, weight])
    g2 = torch.autograd.grad(want.sum(), [hidden, weight])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_conventions_differ_only_by_the_gold_share():
    # uniform puts eps/V on gold too; paper gives gold exactly 1 - eps: with eps > 0 the losses differ
    hidden, weight, _, labels, eps = make_inputs()
    paper = smoothed_cross_entropy(hidden, weight, labels, eps, convention="paper").loss
    uniform = smoothed_cross_entropy(hidden, weight, labels, eps, convention="uniform").loss
    assert not torch.allclose(paper, uniform)
    torch.testing.assert_close(paper, reference(hidden, weight, labels, eps, "paper"))


def test_bfloat16_inputs_give_bfloat16_gradients_close_to_float32():
    hidden, weight, _, labels, eps = make_inputs(dtype=torch.float32)
    h16 = hidden.detach().bfloat16().requires_grad_()
    w16 = weight.detach().bfloat16().requires_grad_()
    out16 = smoothed_cross_entropy(h16, w16, labels, eps.float())
    out16.loss.sum().backward()
    assert out16.loss.dtype == torch.float32 and h16.grad.dtype == torch.bfloat16 and w16.grad.dtype == torch.bfloat16
    ref = reference(h16.detach().float(), w16.detach().float(), labels, eps.float(), "paper")
    torch.testing.assert_close(out16.loss, ref, rtol=2e-2, atol=2e-2)


def test_autocast_runs_the_products_in_its_dtype_over_float32_weights():
    """bf16 mixed precision (float32 weights, autocast on): the head computes exactly what it computes for bf16
    inputs (products in bf16, the rest in float32), and the gradients keep the weights' float32 dtype."""
    hidden, weight, _, labels, eps = make_inputs(dtype=torch.float32)
    h16 = hidden.detach().bfloat16().requires_grad_()
    w16 = weight.detach().bfloat16().requires_grad_()
    want = smoothed_cross_entropy(h16, w16, labels, eps.float(), chunk_size=16)
    want.loss.sum().backward()
    h32 = h16.detach().float().requires_grad_()
    w32 = w16.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = smoothed_cross_entropy(h32, w32, labels, eps.float(), chunk_size=16)
    got.loss.sum().backward()
    assert got.loss.dtype == torch.float32 and h32.grad.dtype == w32.grad.dtype == torch.float32
    torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=0)
    torch.testing.assert_close(got.entropy, want.entropy, rtol=0, atol=0)
    torch.testing.assert_close(h32.grad, h16.grad.float(), rtol=0, atol=0)
    torch.testing.assert_close(w32.grad.bfloat16(), w16.grad, rtol=0, atol=0)  # same float32 sum, rounded once


def test_frozen_weight_gets_no_gradient_work():
    """LoRA: lm_head is frozen, so only the hidden-state gradient is formed."""
    hidden, weight, _, labels, eps = make_inputs()
    weight.requires_grad_(False)
    out = smoothed_cross_entropy(hidden, weight, labels, eps)
    (grad,) = torch.autograd.grad(out.loss.mean(), [hidden])
    ref = reference(hidden, weight, labels, eps, "paper")
    torch.testing.assert_close(grad, torch.autograd.grad(ref.mean(), [hidden])[0])


def test_no_grad_forward_matches():
    hidden, weight, _, labels, eps = make_inputs()
    with torch.no_grad():
        out = smoothed_cross_entropy(hidden, weight, labels, eps)
    torch.testing.assert_close(out.loss, reference(hidden, weight, labels, eps, "paper").detach())


def test_no_trained_tokens_still_backpropagates_zero():
    hidden = torch.randn(0, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    out = smoothed_cross_entropy(hidden, weight, torch.zeros(0, dtype=torch.long), torch.zeros(0))
    out.loss.sum().backward()
    assert weight.grad is not None and torch.count_nonzero(weight.grad) == 0


def test_shape_and_convention_errors():
    hidden, weight, _, labels, eps = make_inputs()
    with pytest.raises(ValueError, match="unknown smoothing convention 'papper'"):
        smoothed_cross_entropy(hidden, weight, labels, eps, convention="papper")
    with pytest.raises(ValueError, match="expected hidden"):
        smoothed_cross_entropy(hidden, weight, labels, eps[:-1])


def test_default_chunk_bounds_the_block_size():
    assert default_chunk_size(32_000) * 32_000 <= 2**24
    assert default_chunk_size(128_256) == 512 and default_chunk_size(1000) == 2**24 // 1000


@pytest.mark.parametrize("upstream_kind", ["mean", "per-token"])
@pytest.mark.parametrize("scale, softcap", [(1.0, 3.0), (0.5, 2.0)])
def test_soft_capped_logits_match_the_reference(upstream_kind, scale, softcap):
    """Gemma-2/3: logits c * tanh(z / c). 'mean' takes the gradients formed in the forward, 'per-token' the
    recomputing backward; a cap of 2-3 on logits of size ~5 makes the tanh's slope matter (it is far from 1)."""
    hidden, weight, b, labels, eps = make_inputs(bias=True)
    n = labels.shape[0]
    upstream = torch.full((n,), 1 / n, dtype=torch.float64) if upstream_kind == "mean" else \
        torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    params = [hidden, weight, b]
    out = smoothed_cross_entropy(hidden, weight, labels, eps, bias=b, chunk_size=7, logit_scale=scale, softcap=softcap)
    ref = reference(hidden, weight, labels, eps, "paper", b, scale=scale, softcap=softcap)
    grads = torch.autograd.grad((out.loss * upstream).sum(), params)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), params)
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    uncapped = reference(hidden, weight, labels, eps, "paper", b, scale=scale)
    assert (uncapped - ref).abs().max() > 0.1, "the cap must change the loss for this test to mean anything"
