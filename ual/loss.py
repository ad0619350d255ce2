"""Per-token label-smoothed cross-entropy from hidden states, chunked, without the [N, V] logits.

loss_t = (1 - eps_t) * NLL_t + eps_t * U_t, where U_t is the cross-entropy against the uniform part:
- ``uniform`` (PyTorch / transformers' LabelSmoother): eps/V on every entry, U = lse(z) - mean(z);
- ``paper`` (the UAL authors'): eps/(V-1) on each non-gold entry, U = lse(z) - (sum(z) - z_y)/(V-1).

Only trained positions are passed in. The forward keeps the log-sum-exp per token; the backward
recomputes each chunk's logits and uses dL/dz = softmax(z) - target, so peak extra memory is one
[chunk, V] float32 block (plus its exp) whatever the sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CONVENTIONS = ("paper", "uniform")
# Default chunk holds about 2**25 logits (128 MiB in float32) whatever the vocabulary.
DEFAULT_CHUNK_ELEMENTS = 2**25


def default_chunk_size(vocab_size: int) -> int:
    return max(1, DEFAULT_CHUNK_ELEMENTS // vocab_size)


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


class _SmoothedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, smoothing, convention, chunk_size, logit_scale):
        n_tokens, vocab = hidden.shape[0], weight.shape[0]
        acc_dtype = torch.promote_types(weight.dtype, torch.float32)
        loss = torch.empty(n_tokens, device=hidden.device, dtype=acc_dtype)
        lse = torch.empty_like(loss)
        entropy = torch.empty_like(loss)
        is_top1 = torch.empty(n_tokens, device=hidden.device, dtype=torch.bool)
        eps = smoothing.to(acc_dtype)
        for s in range(0, n_tokens, chunk_size):
            e = min(s + chunk_size, n_tokens)
            z = _logits(hidden[s:e], weight, bias, logit_scale)
            y = labels[s:e]
            lse_c = torch.logsumexp(z, dim=-1)
            z_y = z.gather(1, y[:, None]).squeeze(1)
            sum_z = z.sum(-1)
            nll = lse_c - z_y
            if convention == "uniform":
                uni = lse_c - sum_z / vocab
            else:
                uni = lse_c - (sum_z - z_y) / (vocab - 1)
            loss[s:e] = (1 - eps[s:e]) * nll + eps[s:e] * uni
            lse[s:e] = lse_c
            is_top1[s:e] = z.argmax(-1) == y
            z.sub_(lse_c[:, None])  # log p, in place
            entropy[s:e] = -(z.exp() * z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, labels, eps, lse)
        ctx.convention, ctx.chunk_size, ctx.logit_scale = convention, chunk_size, logit_scale
        ctx.mark_non_differentiable(entropy, is_top1)
        return loss, entropy, is_top1

    @staticmethod
    def backward(ctx, grad_loss, *_):
        from trl.trainer.utils import maybe_gather_lm_head_ctx

        hidden, weight, bias, labels, eps, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n_tokens = hidden.shape[0]
        with maybe_gather_lm_head_ctx(weight, bias):
            vocab = weight.shape[0]
            grad_h = torch.empty_like(hidden) if need_h else None
            # Accumulate the weight gradient in float32 across chunks, like TRL's fused head.
            acc_dtype = lse.dtype
            grad_w = torch.zeros(weight.shape, device=weight.device, dtype=acc_dtype) if need_w else None
            grad_b = torch.zeros(vocab, device=weight.device, dtype=acc_dtype) if need_b else None
            off_gold = eps / vocab if ctx.convention == "uniform" else eps / (vocab - 1)
            # dL/dz = softmax(z) - target; target = off_gold everywhere plus this much more at the gold token.
            at_gold = 1 - eps if ctx.convention == "uniform" else 1 - eps - off_gold
            scale = grad_loss.to(lse.dtype) * ctx.logit_scale
            for s in range(0, n_tokens, ctx.chunk_size):
                e = min(s + ctx.chunk_size, n_tokens)
                dz = _logits(hidden[s:e], weight, bias, ctx.logit_scale)
                dz.sub_(lse[s:e, None]).exp_().sub_(off_gold[s:e, None])
                dz[torch.arange(e - s, device=dz.device), labels[s:e]] -= at_gold[s:e]
                dz.mul_(scale[s:e, None])
                if need_b:
                    grad_b += dz.sum(0)
                dz = dz.to(weight.dtype)
                if need_h:
                    grad_h[s:e] = (dz @ weight).to(hidden.dtype)
                if need_w:
                    _addmm_fp32(grad_w, dz.t(), hidden[s:e].to(weight.dtype))
        return (
            grad_h,
            grad_w.to(weight.dtype) if need_w else None,
            grad_b.to(bias.dtype) if need_b else None,
            None, None, None, None, None,
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
    loss, entropy, is_top1 = _SmoothedCrossEntropy.apply(
        hidden, weight, bias, labels, smoothing, convention, chunk_size, logit_scale
    )
    return SmoothedLossOutput(loss=loss, entropy=entropy, is_top1=is_top1)
