"""Entry point: ``python -m ual.train RECIPE.yaml [--key value ...]``, also under ``accelerate launch -m ual.train``.

The recipe is parsed by TRL's TrlParser into UALConfig (training + smoothing), TRL's ModelConfig (model,
LoRA/QLoRA) and the ``datasets:`` mixture; CLI flags override the YAML, and an unknown key is an error
that names it. Data are loaded and checked before the model, so a bad score fails in seconds.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from .config import UALConfig
from .data import UALMixtureConfig, load_mixture
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
    """Parse ``RECIPE.yaml [--key value ...]`` (or ``--config RECIPE.yaml``); CLI flags override the file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--config", *argv]
    if "--config" not in argv and not {"-h", "--help"} & set(argv):
        raise SystemExit("usage: python -m ual.train RECIPE.yaml [--key value ...]  (--help lists every key)")
    return make_parser().parse_args_and_config(argv)


def _log_to_console(training_args: UALConfig) -> None:
    if training_args.should_log and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[ual] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> UALTrainer:
    training_args, model_args, data_args = parse_args(argv)
    _log_to_console(training_args)

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
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
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
