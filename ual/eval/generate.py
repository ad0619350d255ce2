"""Batched generation from chat prompts, with transformers (always) or vLLM (when it is installed and a GPU
is present), returning the same records either way so results files do not depend on the backend.

Why chat prompts are rendered here and tokenized without special tokens: a chat template already writes
the BOS token; tokenizing its output with ``add_special_tokens=True`` would add a second one. Plain-text prompts
(``--protocol paper``) are tokenized with them, as the UAL authors' tokenizer did.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ual.errors import UsageError

BACKENDS = ("auto", "transformers", "vllm")


@dataclass
class GenerationSettings:
    """Decoding settings, recorded verbatim in settings.json. ``temperature`` 0 means greedy."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    batch_size: int = 8
    seed: int = 0
    stop_strings: list[str] = field(default_factory=list)
    max_prompt_tokens: int | None = None  # keep only a prompt's last N tokens (the UAL authors' max_tokens)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.temperature < 0:
            raise UsageError(f"--temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must lie in (0, 1], got {self.top_p}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise UsageError(f"max_prompt_tokens must be at least 1, got {self.max_prompt_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return {**asdict(self), "decoding": "greedy" if self.greedy else "sampling"}


@dataclass(frozen=True)
class Generation:
    """One completion: the text (special tokens removed, cut at EOS or a stop string), its length in new
    tokens, and why it ended: ``eos``, ``stop`` (a stop string) or ``length`` (hit max_new_tokens)."""

    text: str
    num_tokens: int
    finish_reason: str


def read_chat_template(path: str | None) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"--chat-template {path!r}: no such file")
    return p.read_text(encoding="utf-8")


def render_prompts(tokenizer, conversations: list[list[dict]], chat_template: str | None = None, *, where: str = "the model") -> list[str]:
    """Each conversation rendered with the generation prompt appended (the model's template, or ``chat_template``)."""
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise UsageError(f"{where} has no chat template; pass --chat-template FILE (a Jinja chat template)")
    try:
        return [
            tokenizer.apply_chat_template(conv, chat_template=chat_template, add_generation_prompt=True, tokenize=False)
            for conv in conversations
        ]
    except Exception as e:  # jinja errors: TemplateError, raise_exception() in the template, ...
        source = "--chat-template" if chat_template is not None else f"the chat template of {where}"
        raise UsageError(f"{source} failed to render a prompt: {e}") from None


def encode_prompts(tokenizer, prompts: list[str], settings: GenerationSettings, *, raw: bool) -> list[list[int]]:
    """Token ids of each prompt: chat-rendered ones as they are, plain-text (``raw``) ones with the tokenizer's
    special tokens; then only the last ``max_prompt_tokens`` are kept, as the UAL authors did."""
    encoded = [tokenizer(p, add_special_tokens=raw)["input_ids"] for p in prompts]
    if settings.max_prompt_tokens is not None:
        encoded = [ids[-settings.max_prompt_tokens:] for ids in encoded]
    return encoded


def vllm_usable() -> bool:
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def choose_backend(backend: str) -> str:
    """``auto``: vLLM when installed and a GPU is present, else transformers."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "vllm" and not vllm_usable():
        raise UsageError("--backend vllm needs the vllm package and a CUDA GPU")
    if backend == "auto":
        return "vllm" if vllm_usable() else "transformers"
    return backend


def _eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    if not ids:
        raise UsageError("the model and tokenizer define no EOS token: generation could never stop")
    return sorted(ids)


def _finish(new_ids: list[int], eos: set[int], tokenizer, settings: GenerationSettings) -> Generation:
    """Cut a completion at its first EOS, then at its first stop string, and say which ended it."""
    reason = "length"
    for i, t in enumerate(new_ids):
        if t in eos:
            new_ids, reason = new_ids[:i], "eos"
            break
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    cuts = [text.find(s) for s in settings.stop_strings if s and s in text]
    if cuts:
        text, reason = text[: min(cuts)], "stop"
    return Generation(text.strip(), len(new_ids), reason)


@torch.inference_mode()
def generate_transformers(model, tokenizer, prompts: list[str], settings: GenerationSettings, *, desc: str = "generating", progress: bool = True, raw: bool = False) -> list[Generation]:
    """Left-padded batches, longest prompts first (similar lengths share a batch; an out-of-memory shows up
    in the first batch, not after an hour). Results come back in the order of ``prompts``."""
    from transformers import set_seed

    set_seed(settings.seed)
    tokenizer.padding_side = "left"
    eos = _eos_ids(model, tokenizer)
    config = copy.deepcopy(model.generation_config)
    config.max_new_tokens = settings.max_new_tokens
    config.max_length = None
    config.do_sample = not settings.greedy
    config.temperature = None if settings.greedy else settings.temperature
    config.top_k = None if settings.greedy else settings.top_k
    config.top_p = None if settings.greedy else settings.top_p
    config.eos_token_id = eos
    config.pad_token_id = tokenizer.pad_token_id
    config.stop_strings = list(settings.stop_strings) or None
    encoded = encode_prompts(tokenizer, prompts, settings, raw=raw)
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    device = next(model.parameters()).device
    results: list[Generation | None] = [None] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit="sample", disable=not progress) as bar:
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt").to(device)
            out = model.generate(**batch, generation_config=config, tokenizer=tokenizer)
            width = batch["input_ids"].shape[1]
            for row, i in enumerate(idx):
                results[i] = _finish(out[row, width:].tolist(), set(eos), tokenizer, settings)
            bar.update(len(idx))
    return results  # type: ignore[return-value]


# The max_lora_rank values vLLM accepts (its LoRAConfig refuses any other, e.g. 12).
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds an adapter of rank ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise UsageError(f"the adapter's LoRA rank {rank} is above the largest vLLM serves ({VLLM_LORA_RANKS[-1]}); "
                     "use --backend transformers")


def generate_vllm(spec, tokenizer, prompts: list[str], settings: GenerationSettings, *, dtype: str = "auto", raw: bool = False) -> list[Generation]:
    """The same records from vLLM. UNTESTED in this repository (vLLM cannot be installed on its CPU-only
    machines); kept to the documented vLLM API: ``LLM.generate`` on token-id prompts, ``LoRARequest`` for
    an adapter, ``finish_reason`` "stop"/"length" and ``stop_reason`` None for EOS."""
    import json

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    lora = None
    kwargs = {}
    if spec.adapter:
        from vllm.lora.request import LoRARequest

        rank = json.loads((Path(spec.adapter) / "adapter_config.json").read_text()).get("r", 16)
        kwargs = {"enable_lora": True, "max_lora_rank": vllm_lora_rank(int(rank))}
        lora = LoRARequest("adapter", 1, str(spec.adapter))
    llm = LLM(model=spec.model, tokenizer=getattr(tokenizer, "name_or_path", None) or spec.model, dtype=dtype, seed=settings.seed, **kwargs)
    params = SamplingParams(
        temperature=0.0 if settings.greedy else settings.temperature,
        top_k=(settings.top_k or -1) if not settings.greedy else -1,
        top_p=(settings.top_p or 1.0) if not settings.greedy else 1.0,
        max_tokens=settings.max_new_tokens,
        seed=settings.seed,
        stop=list(settings.stop_strings) or None,
        skip_special_tokens=True,
    )
    token_prompts = [TokensPrompt(prompt_token_ids=ids) for ids in encode_prompts(tokenizer, prompts, settings, raw=raw)]
    outputs = llm.generate(token_prompts, params, lora_request=lora)
    results = []
    for out in outputs:
        c = out.outputs[0]
        if c.finish_reason == "length":
            reason = "length"
        else:
            reason = "stop" if isinstance(c.stop_reason, str) else "eos"
        results.append(Generation(c.text.strip(), len(c.token_ids), reason))
    return results
