"""Entry point: ``python -m ual.train RECIPE.yaml [OVERLAY.yaml ...] [--key value ...]``, also under
``accelerate launch -m ual.train``.

The recipe (merged with its overlays, see ``ual.recipe``) is parsed by TRL's TrlParser into UALConfig (training + smoothing), TRL's ModelConfig (model,
LoRA/QLoRA) and the ``datasets:`` mixture; CLI flags override the YAML, and an unknown key is an error
that names it. Data are loaded and checked before the model, so a bad score fails in seconds.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field

import yaml
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from .config import UALConfig
from .data import UALMixtureConfig, load_mixture
from .recipe import load_recipe, split_argv
from .trainer import UALTrainer

logger = logging.getLogger("ual")


@dataclass
class UALDataArguments(UALMixtureConfig):
    """The recipe's ``datasets:`` plus how much of it to hold out for evaluation."""

    test_split_size: float | None = field(
        default=None,
        metadata={"help": "Fraction (or row count) of the mixture held out as eval set; the mapping is fitted on the rest."},
    )


def make_parser() -> TrlParser:
    return TrlParser((UALConfig, ModelConfig, UALDataArguments), prog="python -m ual.train")


def parse_args(argv: list[str] | None = None) -> tuple[UALConfig, ModelConfig, UALDataArguments]:
    """Parse ``RECIPE.yaml [OVERLAY.yaml ...] [--key value ...]``; overlays and CLI flags override the recipe."""
    argv = list(sys.argv[1:] if argv is None else argv)
    recipes, flags = split_argv(argv)
    if not recipes:
        if {"-h", "--help"} & set(flags):
            make_parser().parse_args_and_config(flags)
        raise SystemExit("usage: python -m ual.train RECIPE.yaml [OVERLAY.yaml ...] [--key value ...]  (--help lists every key)")
    config, _launcher = load_recipe(recipes)  # launcher keys are `ual train`'s business
    # TRL's own parser reads the merged recipe, so YAML, env and CLI handling are exactly TRL's
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="ual-recipe-", delete=False) as merged:
        yaml.safe_dump(config, merged, sort_keys=False)
    try:
        return make_parser().parse_args_and_config(["--config", merged.name, *flags])
    finally:
        os.unlink(merged.name)


def _log_to_console(training_args: UALConfig) -> None:
    if training_args.should_log and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[ual] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def check_model_args(model_args: ModelConfig) -> None:
    """Model-side mistakes that would otherwise surface only after a (long) model load."""
    name = model_args.model_name_or_path
    if not name:
        raise ValueError("the recipe has no model_name_or_path")
    if not os.path.isdir(os.path.expanduser(name)):
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        if offline or name.startswith((".", "/", "~")):
            raise FileNotFoundError(
                f"model_name_or_path {name!r} is not a local folder"
                + (" and HF_HUB_OFFLINE is set, so it cannot be downloaded" if offline else "")
                + ". Download it where there is network (`hf download "
                f"{name} --local-dir models/{name.rstrip('/').split('/')[-1]}`) and point model_name_or_path at that folder."
            )
    if model_args.use_peft and "lm_head" in (model_args.lora_target_modules or []):
        raise ValueError(
            "lora_target_modules includes 'lm_head': the smoothed loss reads lm_head's weight directly, so an adapter "
            "there would never be trained. Remove 'lm_head' from lora_target_modules."
        )
    if (model_args.load_in_4bit or model_args.load_in_8bit) and importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("load_in_4bit/load_in_8bit (QLoRA) needs bitsandbytes: pip install bitsandbytes")


def resume_arg(value):
    """``--resume_from_checkpoint true`` means the last checkpoint in output_dir, as in transformers' Trainer."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true" or None
    return value


def main(argv: list[str] | None = None) -> UALTrainer:
    training_args, model_args, data_args = parse_args(argv)
    _log_to_console(training_args)
    check_model_args(model_args)

    # Data first: every bad score, column or path fails here, before a model is loaded
    dataset = load_mixture(data_args.datasets, training_args)
    eval_dataset = None
    if data_args.test_split_size is not None:
        split = dataset.train_test_split(test_size=data_args.test_split_size, seed=training_args.seed)
        dataset, eval_dataset = split["train"], split["test"]
    logger.info("training on %d samples from %d dataset(s)", len(dataset), len(data_args.datasets))

    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    training_args.model_init_kwargs = model_init_kwargs
    trainer = UALTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    result = trainer.train(resume_from_checkpoint=resume_arg(training_args.resume_from_checkpoint))
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    logger.info("saved model, tokenizer and %s to %s", "ual_smoothing.json", training_args.output_dir)
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return trainer


if __name__ == "__main__":
    main()
