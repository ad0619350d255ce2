"""Loading a model (local directory or hub id) with an optional PEFT adapter, with errors that name the
path: a typo in ``--model`` should say "no such directory", not a hub 404 after a minute of retries."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ual.errors import UsageError
from ual.files import looks_local


@dataclass(frozen=True)
class ModelSpec:
    """Which weights to load: a base model and optionally an adapter on it, with a display name."""

    model: str
    adapter: str | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        base = Path(self.model.rstrip("/")).name or self.model
        return f"{base}+{Path(self.adapter.rstrip('/')).name}" if self.adapter else base

    @classmethod
    def of(cls, model: str, adapter: str | None = None, name: str | None = None) -> "ModelSpec":
        """The spec for ``--model`` (and ``--adapter``). A ``--model`` folder that holds a PEFT adapter and no model
        is that adapter on the base its ``adapter_config.json`` names, as PEFT loads it."""
        folder = Path(model).expanduser()
        if adapter is None and (folder / "adapter_config.json").exists() and not (folder / "config.json").exists():
            base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
            if not base:
                raise UsageError(f"--model {model!r} holds a PEFT adapter whose adapter_config.json names no base "
                                 "model; pass the base as --model and this folder as --adapter")
            return cls(base, model, name)
        return cls(model, adapter, name)

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """``[NAME=]PATH[:ADAPTER]``, as ``ual analyze clustering --model`` takes it. A PATH that exists as
        written is never split at a colon."""
        name = None
        if "=" in text and not Path(text).exists():
            name, text = text.split("=", 1)
            if not name:
                raise UsageError(f"--model {text!r}: empty NAME before '='")
        if Path(text).expanduser().exists() or ":" not in text:
            return cls.of(text, None, name)
        model, adapter = text.rsplit(":", 1)
        if not model or not adapter:
            raise UsageError(f"--model {text!r}: expected [NAME=]PATH[:ADAPTER]")
        return cls(model, adapter, name)


def check_model_path(path: str, flag: str = "--model") -> None:
    """Fail fast on a local model path that does not exist or is not a model directory."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            hint = " (it holds a PEFT adapter: pass it alone as --model, or as --adapter with its base model)" if (
                p / "adapter_config.json"
            ).exists() else ""
            raise UsageError(f"{flag} {path!r} is not a model directory: no config.json{hint}")
        return
    if p.exists():
        raise UsageError(f"{flag} {path!r} is a file; expected a model directory or a hub id")
    if looks_local(path):
        raise UsageError(f"{flag} {path!r}: no such directory")


def check_adapter_path(path: str) -> dict:
    """The adapter's ``adapter_config.json``; fail fast when the directory or the file is missing."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UsageError(f"--adapter {path!r}: no such directory")
    cfg = p / "adapter_config.json"
    if not cfg.exists():
        raise UsageError(f"--adapter {path!r} is not a PEFT adapter directory: no adapter_config.json")
    return json.loads(cfg.read_text())


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a GPU that has it, float32 elsewhere (CPU half precision is slow and lossy)."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise UsageError(f"--dtype {dtype!r}: choose auto, float32, bfloat16 or float16") from None


def _same_base(recorded: str | None, given: str) -> bool:
    if not recorded:
        return True
    if recorded == given:
        return True
    r, g = Path(recorded).expanduser(), Path(given).expanduser()
    if r.exists() and g.exists():
        return r.resolve() == g.resolve()
    return r.name == g.name


def load_tokenizer(spec: ModelSpec):
    """The adapter's tokenizer when it saved one (training may have set its chat template), else the model's."""
    from transformers import AutoTokenizer

    source = spec.adapter if spec.adapter and (Path(spec.adapter) / "tokenizer_config.json").exists() else spec.model
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        flag = "--adapter" if source == spec.adapter else "--model"
        where = "" if Path(source).expanduser().exists() else " (not a local directory; tried as a hub id)"
        raise UsageError(f"{flag} {source!r}: cannot load its tokenizer{where}: {e}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: ModelSpec, *, dtype: str = "auto", device: str = "auto"):
    """(model in eval mode on ``device``, tokenizer). An adapter that does not fit the base model (other
    shapes or modules) is an error naming both; one recorded for a differently named base is a warning."""
    from transformers import AutoModelForCausalLM

    check_model_path(spec.model)
    adapter_cfg = check_adapter_path(spec.adapter) if spec.adapter else None
    dev = pick_device(device)
    tokenizer = load_tokenizer(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.model, dtype=pick_dtype(dtype, dev))
    except (OSError, ValueError) as e:
        where = "" if Path(spec.model).expanduser().exists() else " (not a local directory; tried as a hub id)"
        raise UsageError(f"--model {spec.model!r}: cannot load{where}: {e}") from None
    if spec.adapter:
        from peft import PeftModel

        recorded = adapter_cfg.get("base_model_name_or_path")
        try:
            model = PeftModel.from_pretrained(model, spec.adapter)
        except (RuntimeError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()
            detail = " ".join(line.strip() for line in first[:3])
            raise UsageError(
                f"--adapter {spec.adapter!r} does not fit --model {spec.model!r} (the adapter was trained on "
                f"{recorded!r}): {detail}"
            ) from None
        if not _same_base(recorded, spec.model):
            print(
                f"warning: --adapter {spec.adapter!r} was trained on {recorded!r}, applied to {spec.model!r} "
                "(same shapes, so it loads; make sure the base weights are the same)",
                file=sys.stderr,
            )
    model.to(dev).eval()
    return model, tokenizer


def local_dir(spec: ModelSpec) -> Path | None:
    """The local directory results default to (the adapter's, else the model's), or None for a hub id."""
    for path in (spec.adapter, spec.model):
        if path and Path(path).expanduser().is_dir():
            return Path(path).expanduser()
    return None


def model_record(spec: ModelSpec) -> dict:
    """How settings.json names the weights (absolute paths for local ones, so a report can match them)."""

    def norm(p):
        if p is None:
            return None
        q = Path(p).expanduser()
        return str(q.resolve()) if q.exists() else p

    return {"model": norm(spec.model), "adapter": norm(spec.adapter), "label": spec.label}

