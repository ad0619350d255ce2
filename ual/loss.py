"""Per-token label-smoothed cross-entropy from hidden states, chunked, without the [N, V] logits.

loss_t = (1 - eps_t) * NLL_t + eps_t * U_t, where U_t is the cross-entropy against the smoothing distribution:
- ``uniform`` (PyTorch / transformers' LabelSmoother): eps/V on every entry, U = lse(z) - mean(z);
- ``paper`` (the UAL authors'): eps/(V-1) on each non-gold entry, U = lse(z) - (sum(z) - z_y)/(V-1);
- a ``prior`` pi over the vocabulary (e.g. the unigram distribution of the training targets, Pereyra et al.
  2017) replaces either: eps * pi_v on every entry, U = lse(z) - sum_v pi_v z_v (one extra [chunk, V] @ [V]).

Only trained positions are passed in, a chunk of tokens at a time, so the extra memory is two [chunk, V]
float32 blocks whatever the sequence length. dL/dz = softmax(z) - target is known as soon as a chunk's
logits are, so when gradients will be needed the forward also forms the three gradient products for a
unit upstream gradient (3 matrix products in all, the floor). The backward scales them: exact whenever the
upstream gradient is the same for every token, which it is for any sum-or-mean loss (the trainer's). For
any other weighting the backward recomputes each chunk's logits instead (4 products). With ``compiled``,
torch.compile fuses each chunk's elementwise work into a few passes over the logits (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CONVENTIONS = ("paper", "uniform")
# Default chunk (measured, docs/benchmarks.md): about 2**24 logits (64 MiB of float32), but never fewer than
# 512 tokens: each chunk streams the whole [V, H] weight, so short chunks turn the products memory-bound.
DEFAULT_CHUNK_ELEMENTS = 2**24
MIN_CHUNK_TOKENS = 512


def default_chunk_size(vocab_size: int) -> int:
    return max(MIN_CHUNK_TOKENS, DEFAULT_CHUNK_ELEMENTS // vocab_size)


@dataclass
class SmoothedLossOutput:
    """Per-token loss (differentiable) and the no-grad per-token metrics TRL logs."""

    loss: torch.Tensor  # [N] float32 (float64 for float64 inputs)
    entropy: torch.Tensor  # [N] float32, predictive entropy
    is_top1: torch.Tensor  # [N] bool, gold token is the argmax


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, logit_scale: float,
            softcap: float | None = None) -> torch.Tensor:
    """The chunk's logits: the raw product in the (compute) weight's dtype, or float32 (at least) once bias, scale
    or a soft cap apply. The cap comes last, ``c * tanh(z / c)``, as Gemma-2/3's forward applies it."""
    z = h.to(weight.dtype) @ weight.t()
    if bias is None and logit_scale == 1.0 and softcap is None:
        return z  # _chunk_terms reads it in float32; compiled, without a float32 copy of the block
    z = z.to(torch.promote_types(z.dtype, torch.float32))  # float32 at least, float64 stays float64
    if bias is not None:
        z += bias
    if logit_scale != 1.0:
        z *= logit_scale
    if softcap is not None:
        z.div_(softcap).tanh_().mul_(softcap)
    return z


def _softcap_slope_(z: torch.Tensor, softcap: float) -> torch.Tensor:
    """d(capped)/d(uncapped) = 1 - (capped / c)^2, in place of the capped logits."""
    return z.div_(softcap).square_().neg_().add_(1)


def _gold_shares(eps: torch.Tensor, vocab: int, convention: str, prior: torch.Tensor | None = None):
    """The soft target as (share of every token: [n], or [n, V] with a prior; extra share of the gold token)."""
    if prior is not None:
        return eps[:, None] * prior[None, :], 1 - eps
    off_gold = eps / vocab if convention == "uniform" else eps / (vocab - 1)
    return off_gold, (1 - eps if convention == "uniform" else 1 - eps - off_gold)


def _subtract_target_(p: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor, convention: str,
                      prior: torch.Tensor | None = None) -> torch.Tensor:
    """softmax [n, V] -> dL/dz = softmax - soft target, in place (eager paths)."""
    if prior is not None:
        p.addr_(eps, prior, alpha=-1)  # a rank-one update in place: no second [n, V] block
        at_gold = 1 - eps
    else:
        off_gold, at_gold = _gold_shares(eps, p.shape[1], convention)
        p.sub_(off_gold[:, None])
    p[torch.arange(p.shape[0], device=p.device), labels] -= at_gold
    return p


def _smoothing_mean_logit(z, z_y, sum_z, convention: str, prior: torch.Tensor | None):
    """sum_v q_v z_v under the smoothing distribution q (uniform, uniform off the gold token, or the prior)."""
    if prior is not None:
        return z @ prior
    vocab = z.shape[1]
    return sum_z / vocab if convention == "uniform" else (sum_z - z_y) / (vocab - 1)


def _token_terms(z_y, q_z, z_max, sum_p, pz, eps):
    """Per-token loss, log-sum-exp and entropy from a chunk's row reductions (p = exp(z - z_max), pz = sum p*z,
    q_z = the smoothing distribution's mean logit)."""
    lse = z_max + sum_p.log()
    entropy = lse - pz / sum_p  # -sum softmax * log softmax, with log softmax = z - lse
    return (1 - eps) * (lse - z_y) + eps * (lse - q_z), lse, entropy


def _chunk_terms(z, labels, eps, weight, convention: str, logit_scale: float, grad_dtype: torch.dtype | None,
                 softcap: float | None = None, prior: torch.Tensor | None = None):
    """One chunk's logits [n, V] -> per-token loss, lse, entropy, is-top-1 and, for a unit upstream gradient of
    the ``weight``-ed loss (None: unweighted), dL/dz in ``grad_dtype`` (None: no gradient wanted). Eager: the only
    [n, V] blocks are the float32 logits and their exponentials, which become dL/dz in place (with a soft cap the
    logits are kept until then: dL/dz carries the cap's slope).
    """
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    z_y, sum_z, (z_max, argmax) = z.gather(1, labels[:, None]).squeeze(1), z.sum(-1), z.max(-1)
    q_z = _smoothing_mean_logit(z, z_y, sum_z, convention, prior)
    p = (z - z_max[:, None]).exp_()
    sum_p = p.sum(-1)
    pz = (p[:, None, :] @ z[:, :, None]).view(-1)  # a batched dot: no third block
    if softcap is None or grad_dtype is None:
        del z
    loss, lse, entropy = _token_terms(z_y, q_z, z_max, sum_p, pz, eps)
    if grad_dtype is None:
        return loss, lse, entropy, argmax == labels, None
    dz = _subtract_target_(p.div_(sum_p[:, None]), labels, eps, convention, prior)
    if softcap is not None:
        dz.mul_(_softcap_slope_(z, softcap))
        del z
    if weight is not None:
        dz.mul_((weight * logit_scale)[:, None])
    elif logit_scale != 1.0:
        dz.mul_(logit_scale)
    return loss, lse, entropy, argmax == labels, dz.to(grad_dtype)


def _fused_chunk_terms(z, labels, eps, weight, convention: str, logit_scale: float, grad_dtype: torch.dtype | None,
                       softcap: float | None = None, prior: torch.Tensor | None = None):
    """_chunk_terms written for torch.compile: no in-place ops and no stored exponentials, so the graph is a few
    passes over the logits (the row reductions, then dL/dz) that recompute exp as they go and keep no float32
    block: dL/dz is written once, already in ``grad_dtype``.
    """
    vocab = z.shape[1]
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    z_y, sum_z, (z_max, argmax) = z.gather(1, labels[:, None]).squeeze(1), z.sum(-1), z.max(-1)
    p = (z - z_max[:, None]).exp()
    q_z = _smoothing_mean_logit(z, z_y, sum_z, convention, prior)
    loss, lse, entropy = _token_terms(z_y, q_z, z_max, p.sum(-1), (p * z).sum(-1), eps)
    if grad_dtype is None:
        return loss, lse, entropy, argmax == labels, None
    off_gold, at_gold = _gold_shares(eps, vocab, convention, prior)
    if prior is None:
        off_gold = off_gold[:, None]
    gold = torch.arange(vocab, device=z.device)[None, :] == labels[:, None]
    dz = (z - lse[:, None]).exp() - off_gold - torch.where(gold, at_gold[:, None], 0.0)
    if softcap is not None:
        dz = dz * (1 - (z / softcap) ** 2)
    scale = logit_scale if weight is None else (weight * logit_scale)[:, None]
    return loss, lse, entropy, argmax == labels, (dz * scale).to(grad_dtype)


_compiled_chunk_terms = None


def _compiled_terms(z, labels, eps, weight, *args):
    """_fused_chunk_terms through torch.compile (Triton on GPUs, C++ on CPUs): compiled once, for any chunk length
    (and once more for a run that weights its tokens)."""
    global _compiled_chunk_terms
    if _compiled_chunk_terms is None:
        _compiled_chunk_terms = torch.compile(_fused_chunk_terms, fullgraph=True)
    for t in (z, labels, eps, weight):  # the last chunk is shorter: one graph for every length, not one per length
        if t is not None:
            torch._dynamo.maybe_mark_dynamic(t, 0)
    return _compiled_chunk_terms(z, labels, eps, weight, *args)


def _addmm_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b with acc in float32, without rounding the product to a half-precision dtype first."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif acc.device.type == "cuda":
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


class _GradProducts:
    """Accumulates dL/dhidden, dL/dweight, dL/dbias chunk by chunk (weight and bias in float32 or wider)."""

    def __init__(self, hidden, weight, bias, needs):
        acc = torch.promote_types(weight.dtype, torch.float32)
        self.hidden = torch.empty_like(hidden) if needs[0] else None
        self.weight = torch.zeros(weight.shape, device=weight.device, dtype=acc) if needs[1] else None
        self.bias = torch.zeros(weight.shape[0], device=weight.device, dtype=acc) if needs[2] else None

    def add(self, dz, s, e, hidden, weight):
        """Add one chunk's products; ``dz`` is dL/dz of the chunk, in the dtype of ``weight`` (the compute dtype)."""
        if self.bias is not None:
            self.bias += dz.sum(0, dtype=self.bias.dtype)
        if self.hidden is not None:
            self.hidden[s:e] = (dz @ weight).to(self.hidden.dtype)
        if self.weight is not None:
            _addmm_fp32(self.weight, dz.t(), hidden[s:e].to(weight.dtype))


class _SmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, smoothing, token_weight, prior, convention, chunk_size, logit_scale,
                softcap, precompute, compiled):
        # The products run in autocast's dtype when it is on (bf16 mixed precision over float32 weights), as
        # TRL's head and a plain lm_head would; everything else is cast explicitly, so autocast is then turned off.
        device = hidden.device.type
        compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        with torch.autocast(device, enabled=False):
            w = weight.to(compute_dtype)
            n_tokens = hidden.shape[0]
            acc_dtype = torch.promote_types(weight.dtype, torch.float32)
            loss = torch.empty(n_tokens, device=hidden.device, dtype=acc_dtype)
            lse = torch.empty_like(loss)
            entropy = torch.empty_like(loss)
            is_top1 = torch.empty(n_tokens, device=hidden.device, dtype=torch.bool)
            eps = smoothing.to(acc_dtype)
            tw = token_weight.to(acc_dtype) if token_weight is not None else None
            prior = prior.to(device=hidden.device, dtype=acc_dtype) if prior is not None else None
            grads = _GradProducts(hidden, weight, bias, ctx.needs_input_grad[:3]) if precompute else None
            terms = _compiled_terms if compiled else _chunk_terms
            for s in range(0, n_tokens, chunk_size):
                e = min(s + chunk_size, n_tokens)
                loss[s:e], lse[s:e], entropy[s:e], is_top1[s:e], dz = terms(
                    _logits(hidden[s:e], w, bias, logit_scale, softcap), labels[s:e], eps[s:e],
                    tw[s:e] if tw is not None else None, convention, logit_scale,
                    compute_dtype if grads is not None else None, softcap, prior,
                )
                if grads is not None:  # the gradient products for a unit upstream gradient
                    grads.add(dz, s, e, hidden, w)
                del dz
            if tw is not None:
                loss.mul_(tw)
        ctx.save_for_backward(hidden, weight, bias, labels, eps, lse, tw)
        ctx.convention, ctx.chunk_size, ctx.logit_scale, ctx.grads = convention, chunk_size, logit_scale, grads
        ctx.softcap, ctx.prior = softcap, prior
        ctx.compute_dtype = compute_dtype
        ctx.mark_non_differentiable(entropy, is_top1)
        return loss, entropy, is_top1

    @staticmethod
    def backward(ctx, grad_loss, *_):
        grads, ctx.grads = ctx.grads, None
        g = grad_loss.to(ctx.saved_tensors[5].dtype)
        if grads is not None and (g.numel() == 0 or bool((g == g[0]).all())):
            g0 = g[0] if g.numel() else g.new_zeros(())
            # in place: a second float32 copy of the weight's gradient would cost as much as TRL's whole head
            return (
                grads.hidden.mul_(g[:, None].to(grads.hidden.dtype)) if grads.hidden is not None else None,
                grads.weight.mul_(g0).to(ctx.saved_tensors[1].dtype) if grads.weight is not None else None,
                grads.bias.mul_(g0).to(ctx.saved_tensors[2].dtype) if grads.bias is not None else None,
                *([None] * 10),
            )
        return _recompute_backward(ctx, g)


def _recompute_backward(ctx, g):
    """General upstream gradient: recompute each chunk's logits and weight dL/dz token by token."""
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    hidden, weight, bias, labels, eps, lse, tw = ctx.saved_tensors
    if tw is not None:
        g = g * tw
    with maybe_gather_lm_head_ctx(weight, bias):  # ZeRO-3: the weight was released after the forward
        grads = _GradProducts(hidden, weight, bias, ctx.needs_input_grad[:3])
        w = weight.to(ctx.compute_dtype)
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            e = min(s + ctx.chunk_size, hidden.shape[0])
            z = _logits(hidden[s:e], w, bias, ctx.logit_scale, ctx.softcap)
            slope = None if ctx.softcap is None else _softcap_slope_(z.to(lse.dtype, copy=True), ctx.softcap)
            p = z.to(lse.dtype).sub_(lse[s:e, None]).exp_()  # softmax
            del z
            dz = _subtract_target_(p, labels[s:e], eps[s:e], ctx.convention, ctx.prior)
            if slope is not None:
                dz.mul_(slope)
            del slope
            grads.add(dz.mul_((g[s:e] * ctx.logit_scale)[:, None]).to(w.dtype), s, e, hidden, w)
    return (
        grads.hidden,
        grads.weight.to(weight.dtype) if grads.weight is not None else None,
        grads.bias.to(bias.dtype) if grads.bias is not None else None,
        *([None] * 10),
    )


def smoothed_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    smoothing: torch.Tensor,
    *,
    convention: str = "paper",
    bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    compiled: bool = False,
    token_weight: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
) -> SmoothedLossOutput:
    """Per-token smoothed CE of ``hidden [N, H] @ weight[V, H].T`` against ``labels [N]`` with ``smoothing [N]``.

    Every label must be a valid token id (select trained positions before calling). ``compiled`` fuses each
    chunk's elementwise work with torch.compile (same maths; pays a compile on the first call of a run).
    ``token_weight [N]``: the returned per-token loss is ``token_weight * loss``, so a caller that weights its
    tokens unequally (one sample, one vote) still sums it with one upstream gradient for all, and keeps the
    fast backward (products formed in the forward). ``logit_scale`` multiplies the logits and ``softcap`` then caps
    them at ``softcap * tanh(z / softcap)`` (Gemma-2/3's ``final_logit_softcapping``), as the models' forwards do.
    ``prior [V]``: smooth toward this distribution instead (``convention`` then does not apply).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown smoothing convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    if token_weight is not None and token_weight.shape != labels.shape:
        raise ValueError(f"token_weight {tuple(token_weight.shape)} must be shaped like labels {tuple(labels.shape)}")
    if hidden.ndim != 2 or labels.shape != hidden.shape[:1] or smoothing.shape != labels.shape:
        raise ValueError(
            f"expected hidden [N, H], labels [N], smoothing [N]; got {tuple(hidden.shape)}, "
            f"{tuple(labels.shape)}, {tuple(smoothing.shape)}"
        )
    if prior is not None and (prior.shape != weight.shape[:1] or prior.requires_grad):
        raise ValueError(f"prior must be a fixed distribution shaped [V] = {tuple(weight.shape[:1])}, got "
                         f"{tuple(prior.shape)}")
    chunk_size = chunk_size or default_chunk_size(weight.shape[0])
    params = (hidden, weight) if bias is None else (hidden, weight, bias)
    precompute = torch.is_grad_enabled() and any(t.requires_grad for t in params)
    loss, entropy, is_top1 = _SmoothedCrossEntropy.apply(
        hidden, weight, bias, labels, smoothing, token_weight, prior, convention, chunk_size, logit_scale, softcap, precompute,
        compiled,
    )
    return SmoothedLossOutput(loss=loss, entropy=entropy, is_top1=is_top1)


def sample_ids(batch: dict) -> torch.Tensor:
    """Which sample each position of a collated batch belongs to, as one id per sample across the batch:
    the row in a padded batch; in a padding-free row (no attention mask) a new sample starts where the
    position ids restart at 0."""
    rows, length = batch["input_ids"].shape
    ids = torch.arange(rows, device=batch["input_ids"].device)[:, None].expand(rows, length) * (length + 1)
    if "attention_mask" not in batch and "position_ids" in batch:
        ids = ids + (batch["position_ids"] == 0).cumsum(-1)
    return ids


def sample_token_weights(sample_of_token: torch.Tensor) -> tuple[torch.Tensor, int]:
    """For trained tokens tagged with their sample: 1/n_i for each token of sample i (n_i: its trained tokens),
    so the weights of one sample sum to 1; and the number of samples present."""
    _, inverse, counts = torch.unique(sample_of_token, return_inverse=True, return_counts=True)
    return counts.to(torch.float64).reciprocal()[inverse], counts.numel()

