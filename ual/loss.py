"""Per-token label-smoothed cross-entropy from hidden states, chunked, without the [N, V] logits.

loss_t = (1 - eps_t) * NLL_t + eps_t * U_t, where U_t is the cross-entropy against the uniform part:
- ``uniform`` (PyTorch / transformers' LabelSmoother): eps/V on every entry, U = lse(z) - mean(z);
- ``paper`` (the UAL authors'): eps/(V-1) on each non-gold entry, U = lse(z) - (sum(z) - z_y)/(V-1).

Only trained positions are passed in, a chunk of tokens at a time, so the extra memory is two [chunk, V]
float32 blocks whatever the sequence length. dL/dz = softmax(z) - target is known as soon as a chunk's
logits are, so when gradients will be needed the forward also forms the three gradient products for a
unit upstream gradient (3 matrix products in all, the floor). The backward scales them: exact whenever the
upstream gradient is the same for every token, which it is for any sum-or-mean loss (the trainer's). For
any other weighting the backward recomputes each chunk's logits instead (4 products).
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


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, logit_scale: float) -> torch.Tensor:
    z = h.to(weight.dtype) @ weight.t()
    z = z.to(torch.promote_types(z.dtype, torch.float32))  # float32 at least, float64 stays float64
    if bias is not None:
        z += bias
    if logit_scale != 1.0:
        z *= logit_scale
    return z


def _addmm_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b with acc in float32, without rounding the product to a half-precision dtype first."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif acc.device.type == "cuda":
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def _soft_target_grad_(p: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor, convention: str) -> torch.Tensor:
    """softmax [n, V] -> dL/dz = softmax - target, in place (target: off-gold share everywhere, the rest at gold)."""
    vocab = p.shape[1]
    off_gold = eps / vocab if convention == "uniform" else eps / (vocab - 1)
    at_gold = 1 - eps if convention == "uniform" else 1 - eps - off_gold
    p.sub_(off_gold[:, None])
    p[torch.arange(p.shape[0], device=p.device), labels] -= at_gold
    return p


class _GradProducts:
    """Accumulates dL/dhidden, dL/dweight, dL/dbias chunk by chunk (weight and bias in float32 or wider)."""

    def __init__(self, hidden, weight, bias, needs):
        acc = torch.promote_types(weight.dtype, torch.float32)
        self.hidden = torch.empty_like(hidden) if needs[0] else None
        self.weight = torch.zeros(weight.shape, device=weight.device, dtype=acc) if needs[1] else None
        self.bias = torch.zeros(weight.shape[0], device=weight.device, dtype=acc) if needs[2] else None

    def add(self, dz, s, e, hidden, weight):
        if self.bias is not None:
            self.bias += dz.sum(0)
        dz = dz.to(weight.dtype)
        if self.hidden is not None:
            self.hidden[s:e] = (dz @ weight).to(self.hidden.dtype)
        if self.weight is not None:
            _addmm_fp32(self.weight, dz.t(), hidden[s:e].to(weight.dtype))


class _SmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, smoothing, convention, chunk_size, logit_scale, precompute):
        n_tokens, vocab = hidden.shape[0], weight.shape[0]
        acc_dtype = torch.promote_types(weight.dtype, torch.float32)
        loss = torch.empty(n_tokens, device=hidden.device, dtype=acc_dtype)
        lse = torch.empty_like(loss)
        entropy = torch.empty_like(loss)
        is_top1 = torch.empty(n_tokens, device=hidden.device, dtype=torch.bool)
        eps = smoothing.to(acc_dtype)
        grads = _GradProducts(hidden, weight, bias, ctx.needs_input_grad[:3]) if precompute else None
        for s in range(0, n_tokens, chunk_size):
            e = min(s + chunk_size, n_tokens)
            z = _logits(hidden[s:e], weight, bias, logit_scale)  # block 1: [chunk, V]
            y = labels[s:e]
            z_y = z.gather(1, y[:, None]).squeeze(1)
            sum_z = z.sum(-1)
            z_max, argmax = z.max(-1)
            is_top1[s:e] = argmax == y
            z.sub_(z_max[:, None])
            p = torch.exp(z)  # block 2, the only other one
            sum_p = p.sum(-1)
            p.div_(sum_p[:, None])  # softmax
            lse_c = z_max + sum_p.log()
            # entropy = -sum(softmax * log softmax), log softmax = (z - z_max) - log(sum_p); a batched dot, no block
            entropy[s:e] = sum_p.log() - (p[:, None, :] @ z[:, :, None]).view(-1)
            del z
            nll = lse_c - z_y
            uniform_part = lse_c - sum_z / vocab if convention == "uniform" else lse_c - (sum_z - z_y) / (vocab - 1)
            loss[s:e] = (1 - eps[s:e]) * nll + eps[s:e] * uniform_part
            lse[s:e] = lse_c
            if grads is not None:  # dL/dz for a unit upstream gradient, then its three products
                grads.add(_soft_target_grad_(p, y, eps[s:e], convention).mul_(logit_scale), s, e, hidden, weight)
            del p
        ctx.save_for_backward(hidden, weight, bias, labels, eps, lse)
        ctx.convention, ctx.chunk_size, ctx.logit_scale, ctx.grads = convention, chunk_size, logit_scale, grads
        ctx.mark_non_differentiable(entropy, is_top1)
        return loss, entropy, is_top1

    @staticmethod
    def backward(ctx, grad_loss, *_):
        grads, ctx.grads = ctx.grads, None
        g = grad_loss.to(ctx.saved_tensors[5].dtype)
        if grads is not None and (g.numel() == 0 or bool((g == g[0]).all())):
            g0 = g[0] if g.numel() else g.new_zeros(())
            return (
                grads.hidden * g[:, None].to(grads.hidden.dtype) if grads.hidden is not None else None,
                (grads.weight * g0).to(ctx.saved_tensors[1].dtype) if grads.weight is not None else None,
                (grads.bias * g0).to(ctx.saved_tensors[2].dtype) if grads.bias is not None else None,
                *([None] * 6),
            )
        return _recompute_backward(ctx, g)


def _recompute_backward(ctx, g):
    """General upstream gradient: recompute each chunk's logits and weight dL/dz token by token."""
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    hidden, weight, bias, labels, eps, lse = ctx.saved_tensors
    with maybe_gather_lm_head_ctx(weight, bias):  # ZeRO-3: the weight was released after the forward
        grads = _GradProducts(hidden, weight, bias, ctx.needs_input_grad[:3])
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            e = min(s + ctx.chunk_size, hidden.shape[0])
            p = _logits(hidden[s:e], weight, bias, ctx.logit_scale).sub_(lse[s:e, None]).exp_()
            dz = _soft_target_grad_(p, labels[s:e], eps[s:e], ctx.convention)
            grads.add(dz.mul_((g[s:e] * ctx.logit_scale)[:, None]), s, e, hidden, weight)
    return (
        grads.hidden,
        grads.weight.to(weight.dtype) if grads.weight is not None else None,
        grads.bias.to(bias.dtype) if grads.bias is not None else None,
        *([None] * 6),
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
) -> SmoothedLossOutput:
    """Per-token smoothed CE of ``hidden [N, H] @ weight[V, H].T`` against ``labels [N]`` with ``smoothing [N]``.

    Every label must be a valid token id (select trained positions before calling).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown smoothing convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    if hidden.ndim != 2 or labels.shape != hidden.shape[:1] or smoothing.shape != labels.shape:
        raise ValueError(
            f"expected hidden [N, H], labels [N], smoothing [N]; got {tuple(hidden.shape)}, "
            f"{tuple(labels.shape)}, {tuple(smoothing.shape)}"
        )
    chunk_size = chunk_size or default_chunk_size(weight.shape[0])
    params = (hidden, weight) if bias is None else (hidden, weight, bias)
    precompute = torch.is_grad_enabled() and any(t.requires_grad for t in params)
    loss, entropy, is_top1 = _SmoothedCrossEntropy.apply(
        hidden, weight, bias, labels, smoothing, convention, chunk_size, logit_scale, precompute
    )
    return SmoothedLossOutput(loss=loss, entropy=entropy, is_top1=is_top1)
