"""A local transformers model as the judge: same rubric, same parser, batched greedy generation.

For judges you run yourself without a server. Replies from a weak model are often unreadable; they
go through the same reminder-then-failure path as any other judge's.
"""

from __future__ import annotations

from ual.score.judge_openai import Reply
from ual.score.local_model import chat_text, load_causal_lm


class HFJudge:
    """Generates replies for many conversations at once (left-padded batches, greedy decoding)."""

    kind = "hf"

    def __init__(self, model: str, *, device: str = "auto", batch_size: int = 8, max_new_tokens: int = 16):
        self.model_name = model
        self.method = f"judge:hf:{model}"
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.model, self.tokenizer = load_causal_lm(model, device)
        self.tokenizer.padding_side = "left"

    def generate(self, conversations: list[list[dict]]) -> list[Reply]:
        """One greedy reply per conversation, in order."""
        import torch

        replies: list[Reply] = []
        for start in range(0, len(conversations), self.batch_size):
            chunk = conversations[start : start + self.batch_size]
            texts = [chat_text(self.tokenizer, messages, add_generation_prompt=True) for messages in chunk]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(self.model.device) for k, v in enc.items()}
            with torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            width = enc["input_ids"].shape[1]
            for i in range(len(chunk)):
                new = out[i, width:]
                if self.tokenizer.eos_token_id is not None:
                    stops = (new == self.tokenizer.eos_token_id).nonzero()
                    if len(stops):
                        new = new[: int(stops[0])]
                prompt_tokens = int(enc["attention_mask"][i].sum())
                text = self.tokenizer.decode(new, skip_special_tokens=True)
                replies.append(
                    Reply(
                        text=text,
                        usage={
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": int(new.numel()),
                            "total_tokens": prompt_tokens + int(new.numel()),
                        },
                    )
                )
        return replies
