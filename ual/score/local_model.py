"""Loading a local causal LM and turning chat messages into its input text.

Shared by the local judge (``judge_hf``) and the self-estimated scorer (``nll``). Models load from
a local directory or the Hugging Face cache (``HF_HUB_OFFLINE=1`` is respected by transformers).
"""

from __future__ import annotations


class LocalModelError(RuntimeError):
    """The local model cannot be loaded or run."""


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(name: str, device: str = "auto"):
    """(model, tokenizer) in eval mode on ``device``; the tokenizer has a pad token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype="auto")
    except Exception as exc:  # OSError for missing files, ValueError for unknown configs, ...
        raise LocalModelError(f"cannot load the local model {name!r}: {type(exc).__name__}: {exc}") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise LocalModelError(f"the tokenizer of {name!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return model, tokenizer


def chat_text(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """The model's own chat template when it has one; otherwise a plain "Role: text" transcript."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    text = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
    return text + ("\n\nAssistant:" if add_generation_prompt else "")
