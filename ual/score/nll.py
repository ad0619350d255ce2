"""Self-estimated uncertainty (``--judge model-nll``): a causal LM's loss on each sample, relative to the dataset.

The authors' variant (docs/paper.md, step 1) scales smoothing by a sample's perplexity against the
mean: s_i = s_bar * (1 + beta * (ppl_i - mean ppl) / mean ppl). Here, on the 0-99 scale and with the
per-token mean negative log-likelihood (the loss the model trains on) in place of perplexity:

    u_i = clip(center * (1 + beta * (nll_i - mean_nll) / mean_nll), 0, 99)

``nll_i`` is the mean NLL over the tokens of sample i (all turns, rendered with the model's chat
template, or a plain transcript without one), ``mean_nll`` the mean over all rows of the dataset,
``center`` (default 50) the score of an average sample and ``beta`` (default 1) the spread. A sample
the model finds twice as surprising as average scores 99 (clipped); a perfectly predictable one 0.
"""

from __future__ import annotations

import numpy as np

from ual.score.local_model import chat_text, load_causal_lm

NLL_VERSION = "model-nll-v1"


def nll_version(center: float, beta: float) -> str:
    """The provenance string: formula version and its parameters."""
    return f"{NLL_VERSION}(center={center:g},beta={beta:g})"


def nll_to_scores(nlls, center: float = 50.0, beta: float = 1.0) -> np.ndarray:
    """Per-row mean NLLs -> 0-99 scores by the formula above (pure; the mean is over the rows given)."""
    x = np.asarray(nlls, dtype=np.float64)
    if x.size == 0:
        return x
    mean = float(x.mean())
    if mean <= 0.0:
        return np.full_like(x, float(np.clip(center, 0.0, 99.0)))
    return np.clip(center * (1.0 + beta * (x - mean) / mean), 0.0, 99.0)


class NLLScorer:
    """Mean per-token NLL of whole samples under a local causal LM, in right-padded batches."""

    kind = "model-nll"

    def __init__(self, model: str, *, device: str = "auto", batch_size: int = 8, max_length: int = 2048):
        self.model_name = model
        self.method = f"model-nll:{model}"
        self.batch_size = batch_size
        self.max_length = max_length
        self.model, self.tokenizer = load_causal_lm(model, device)
        self.tokenizer.padding_side = "right"

    def mean_nll(self, samples: list[list[dict]]) -> list[tuple[float | None, int]]:
        """(mean NLL, tokens scored) per sample; (None, n) when the sample has fewer than 2 tokens."""
        import torch
        import torch.nn.functional as F

        results: list[tuple[float | None, int]] = []
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start : start + self.batch_size]
            texts = [chat_text(self.tokenizer, messages, add_generation_prompt=False) for messages in chunk]
            enc = self.tokenizer(
                texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
            )
            enc = {k: v.to(self.model.device) for k, v in enc.items()}
            with torch.inference_mode():
                logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            labels = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].bool()
            losses = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none"
            ).view(labels.shape)
            for i in range(len(chunk)):
                n = int(mask[i].sum())
                results.append((float(losses[i][mask[i]].mean()) if n else None, n))
        return results
