"""What every generation eval shares: its options, where results go by default, loading the model on the
chosen backend, rendering and generating, and writing settings/results/samples in one atomic step."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ual.eval import outputs
from ual.errors import UsageError
from ual.eval.generate import (
    Generation,
    GenerationSettings,
    choose_backend,
    generate_transformers,
    generate_vllm,
    read_chat_template,
    render_prompts,
)
from ual.eval.protocols import PROTOCOLS
from ual.eval.models import (
    ModelSpec,
    check_adapter_path,
    check_model_path,
    load_model,
    load_tokenizer,
    local_dir,
    model_record,
)


@dataclass
class EvalOptions:
    """Options every generation eval takes (the CLI's common flags)."""

    spec: ModelSpec
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    output_dir: str | None = None
    overwrite: bool = False
    limit: int | None = None
    chat_template: str | None = None  # a file
    dtype: str = "auto"
    device: str = "auto"
    backend: str = "auto"
    progress: bool = True
    command: list[str] | None = None
    protocol: str = "ual"  # ual | paper (ual.eval.protocols)

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be a positive number of rows, got {self.limit}")
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"--protocol {self.protocol!r}: choose one of {', '.join(PROTOCOLS)}")
        if self.protocol == "paper" and self.chat_template is not None:
            raise UsageError("--protocol paper writes the authors' plain-text prompt; --chat-template does not apply")


def default_output_dir(spec: ModelSpec, name: str) -> Path:
    """``<adapter or model dir>/eval/<name>``, so ``ual report RUN_DIR`` finds it; for a hub id,
    ``outputs/eval/<id with / as __>/<name>``."""
    base = local_dir(spec)
    if base is not None:
        return base / "eval" / name
    return Path("outputs") / "eval" / re.sub(r"[^\w.-]+", "__", spec.model) / name


def check_inputs(opts: EvalOptions, name: str) -> Path:
    """Everything that can be checked before a model is loaded; returns the output directory."""
    check_model_path(opts.spec.model)
    if opts.spec.adapter:
        check_adapter_path(opts.spec.adapter)
    read_chat_template(opts.chat_template)
    out = Path(opts.output_dir) if opts.output_dir else default_output_dir(opts.spec, name)
    return outputs.check_output_dir(out, opts.overwrite)


def generate_for(opts: EvalOptions, conversations: list[list[dict]] | None, desc: str, *,
                 raw_prompts: list[str] | None = None) -> tuple[list[Generation], dict]:
    """Load the model on the chosen backend, render every conversation (or take ``raw_prompts``, plain text that
    no chat template touches), generate. Returns the generations and the run facts that belong in settings.json
    (backend, device, dtype, chat template, the first prompt exactly, timing)."""
    backend = choose_backend(opts.backend)
    raw = raw_prompts is not None
    template = None if raw else read_chat_template(opts.chat_template)
    started = time.time()

    def prompts_for(tokenizer):
        return raw_prompts if raw else render_prompts(tokenizer, conversations, template,
                                                      where=f"--model {opts.spec.model!r}")

    if backend == "vllm":
        tokenizer = load_tokenizer(opts.spec)
        prompts = prompts_for(tokenizer)
        device, dtype = "cuda", opts.dtype
        gens = generate_vllm(opts.spec, tokenizer, prompts, opts.generation, dtype=opts.dtype, raw=raw)
    else:
        model, tokenizer = load_model(opts.spec, dtype=opts.dtype, device=opts.device)
        prompts = prompts_for(tokenizer)
        device = str(next(model.parameters()).device)
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        gens = generate_transformers(model, tokenizer, prompts, opts.generation, desc=desc, progress=opts.progress,
                                     raw=raw)
    facts = {
        "backend": backend,
        "device": device,
        "dtype": dtype,
        "chat_template": None if raw else {
            "source": opts.chat_template or "model",
            "template": template if template is not None else tokenizer.chat_template,
        },
        "prompt_tokenization": ("plain text with the tokenizer's special tokens" if raw
                                else "chat template, no special tokens added"),
        "first_prompt": prompts[0] if prompts else None,
        "generation_seconds": round(time.time() - started, 2),
    }
    return gens, facts


def base_settings(opts: EvalOptions, task: str) -> dict:
    return {
        "task": task,
        "protocol": opts.protocol,
        "command": opts.command,
        "model": model_record(opts.spec),
        "limit": opts.limit,
        "generation": opts.generation.to_dict(),
        "requested": {"backend": opts.backend, "dtype": opts.dtype, "device": opts.device},
        "versions": outputs.versions(),
        "started_at": outputs.now(),
    }


def write_results(out: Path, opts: EvalOptions, settings: dict, results: dict, samples: list[dict], extra: dict[str, object] | None = None) -> Path:
    """settings.json + results.json + samples.jsonl (+ ``extra`` JSON files), all appearing at once."""
    settings = {**settings, "finished_at": outputs.now()}
    with outputs.AtomicDir(out, opts.overwrite) as tmp:
        outputs.write_json(tmp / outputs.SETTINGS, settings)
        outputs.write_json(tmp / outputs.RESULTS, results)
        outputs.write_jsonl(tmp / outputs.SAMPLES, samples)
        for name, data in (extra or {}).items():
            outputs.write_json(tmp / name, data)
    return out

