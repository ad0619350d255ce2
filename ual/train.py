"""Entry point: ``python -m ual.train RECIPE.yaml [OVERLAY.yaml ...] [--key value ...]``, also under
``accelerate launch -m ual.train``.

The recipe (merged with its overlays, see ``ual.recipe``) is parsed by TRL's TrlParser into UALConfig (training + smoothing), TRL's ModelConfig (model,
LoRA/QLoRA) and the ``datasets:`` mixture; CLI flags override the YAML, and an unknown key is an error
that names it. Data are loaded and checked before the model, so a bad score fails in seconds.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import os
import re
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field

import yaml
from trl import ModelConfig, TrlParser, get_peft_config, get_quantization_config

from .config import UALConfig
from .data import UALDatasetConfig, UALMixtureConfig, load_mixture
from .errors import UsageError, debug_requested, report
from .files import looks_local
from .processes import stop_with_parent
from .recipe import Recipe, load_recipe, split_argv
from .run_folder import Resume, check_output_dir, resolve_resume
from .trainer import UALTrainer, check_speedups

logger = logging.getLogger("ual")


@dataclass
class UALDataArguments(UALMixtureConfig):
    """The recipe's ``datasets:`` (or TRL's ``dataset_name`` keys, for one dataset) and the eval set: a held-out
    share of the mixture, an ``eval_datasets:`` mixture, or TRL's ``dataset_test_split`` of ``dataset_name``."""

    test_split_size: float | None = field(
        default=None,
        metadata={"help": "Fraction (or row count) of the mixture held out as eval set; the mapping is fitted on the rest."},
    )
    eval_datasets: list[UALDatasetConfig] = field(
        default_factory=list,
        metadata={"help": "Eval set, written like `datasets:` (each row needs its score too; the mapping fitted on "
                          "the training set is applied to it)."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "TRL's key: one training dataset (hub id or local path), instead of `datasets:`."})
    dataset_config: str | None = field(default=None, metadata={"help": "TRL's key: the configuration of dataset_name."})
    dataset_train_split: str = field(default="train", metadata={"help": "TRL's key: the training split of dataset_name."})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "TRL's key: a split of dataset_name used as the eval set."})
    dataset_streaming: bool = field(
        default=False,
        metadata={"help": "TRL's key: stream every dataset (training and eval) instead of loading it. Rows are checked "
                          "as they are read; `uncertainty` reads the score column in one pass first, for its mean. "
                          "Needs max_steps; no fraction, test_split_size, packing or unigram prior."})

    def __post_init__(self):
        if self.dataset_streaming and self.test_split_size is not None:
            raise UsageError("test_split_size splits a loaded dataset; with dataset_streaming: true name the eval set "
                             "instead (eval_datasets, or dataset_test_split of dataset_name)")
        if self.dataset_name is not None:
            if self.datasets:
                raise UsageError("the recipe sets both `datasets:` and TRL's `dataset_name`; keep one")
            self.datasets = [{"path": self.dataset_name, "name": self.dataset_config,
                              "split": self.dataset_train_split}]
            if self.dataset_test_split is not None:
                self.eval_datasets = [*self.eval_datasets, {"path": self.dataset_name, "name": self.dataset_config,
                                                            "split": self.dataset_test_split}]
        elif self.dataset_test_split is not None:
            raise UsageError("dataset_test_split names a split of dataset_name, which the recipe does not set; "
                             "write the eval set as `eval_datasets:`")
        super().__post_init__()
        self.eval_datasets = UALMixtureConfig(datasets=self.eval_datasets).datasets
        if self.eval_datasets and self.test_split_size is not None:
            raise UsageError("the recipe sets both an eval set (eval_datasets / dataset_test_split) and "
                             "test_split_size; keep one")


class RecipeParser(TrlParser):
    """TrlParser whose argument errors are one line (argparse would print the whole 160-line usage first)."""

    def error(self, message):
        raise UsageError(f"{message} (`python -m ual.train --help-all` lists every key)")


def make_parser() -> TrlParser:
    return RecipeParser((UALConfig, ModelConfig, UALDataArguments), prog="python -m ual.train")


# Keys of other tools that mean something else here, with what to write instead.
FOREIGN_KEYS = {
    "torch_dtype": "use 'dtype' (transformers 5 and TRL's ModelConfig renamed torch_dtype; same values)",
    "dataset_mixture": "the alignment-handbook's dataset_mixture is written here as `datasets:`, a list of "
                       "{path, name, split, format, columns, fraction}; note that its `weight` keeps that share of "
                       "each dataset's own rows, while `fraction` is a dataset's share of the mixture",
}


def known_keys(parser: TrlParser) -> set[str]:
    return {action.dest for action in parser._actions} | {"env"}


def unknown_key(key: str, known: set[str], where: str) -> UsageError:
    """The error for a key no config has: a key of another tool says what it is called here and how its meaning
    differs; any other names the nearest known keys (TRL's own error names neither, nor where the key was)."""
    if key in FOREIGN_KEYS:
        return UsageError(f"{where}: unknown key {key!r}: {FOREIGN_KEYS[key]}")
    near = difflib.get_close_matches(key, known, n=2)
    return UsageError(f"{where}: unknown key {key!r}" + (f"; did you mean {' or '.join(map(repr, near))}?" if near
                                                         else "; `python -m ual.train --help-all` lists every key"))


def check_recipe_keys(recipe: Recipe, parser: TrlParser) -> None:
    """Every key of the merged recipe is one a config knows; the error names the file it is in."""
    known = known_keys(parser)
    for key in recipe.config:
        if key not in known:
            raise unknown_key(key, known, recipe.origins.get(key, "the recipe"))


def parse_args(argv: list[str] | None = None) -> tuple[UALConfig, ModelConfig, UALDataArguments]:
    """Parse ``RECIPE.yaml [OVERLAY.yaml ...] [--key value ...]``; overlays and CLI flags override the recipe."""
    argv = list(sys.argv[1:] if argv is None else argv)
    recipes, flags = split_argv(argv)
    parser = make_parser()
    if "--help-all" in flags:
        parser.parse_args_and_config(["--help"])  # every key of UALConfig, TRL's ModelConfig and the data
    if {"-h", "--help"} & set(flags):
        print(short_help())
        raise SystemExit(0)
    if not recipes:
        raise UsageError("usage: python -m ual.train RECIPE.yaml [OVERLAY.yaml ...] [--key value ...]  (--help-all lists every key)")
    recipe = load_recipe(recipes)  # launcher keys are `ual train`'s business
    check_recipe_keys(recipe, parser)
    # TRL's own parser reads the merged recipe, so YAML, env and CLI handling are exactly TRL's
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="ual-recipe-", delete=False) as merged:
        yaml.safe_dump(recipe.config, merged, sort_keys=False)
    try:
        *parsed, unknown = parser.parse_args_and_config(["--config", merged.name, *flags], return_remaining_strings=True)
    except UsageError:
        raise
    except (ValueError, TypeError) as exc:  # a value rejected by a config dataclass: the user's recipe or flag
        raise UsageError(str(exc)) from None
    finally:
        os.unlink(merged.name)
    for flag in unknown:  # a flag on the command line gets the same answer as the key in a recipe
        if flag.startswith("--"):
            raise unknown_key(flag[2:].split("=", 1)[0], known_keys(parser), "the command line")
    if unknown:
        raise UsageError(f"unknown argument(s) {' '.join(unknown)} (`python -m ual.train --help-all` lists every key)")
    return tuple(parsed)


def short_help() -> str:
    """``ual train --help``: how a run is put together and the smoothing keys; ``--help-all`` lists every key."""
    from .config import SMOOTHING_FIELDS
    from .launch import LAUNCH_FLAGS

    fields = UALConfig.__dataclass_fields__
    extra = ("loss_chunk_size", "loss_compile", "overwrite_output_dir")
    def first_sentence(name):
        text = " ".join(fields[name].metadata.get("help", "").split())
        first = re.split(r"(?<=\.)\s+(?=[A-Z])", text)[0]
        choices = fields[name].metadata.get("choices")
        first += f" One of: {', '.join(map(str, choices))}." if choices else ""
        return textwrap.fill(first, width=114, initial_indent=f"  --{name:<22} ", subsequent_indent=" " * 27)

    keys = "\n".join(first_sentence(name) for name in (*SMOOTHING_FIELDS, *extra) if name in fields)
    launch = " ".join(f"--{k}" for k in LAUNCH_FLAGS)
    return f"""usage: ual train RECIPE.yaml [OVERLAY.yaml ...] [--key value ...] [--dry-run]

  RECIPE.yaml        a scenario recipe: model, data (`datasets:`), smoothing and training keys; a file, or the
                     name of a recipe ual ships (tiny, mixed, high_entropy, low_entropy), from any folder
  OVERLAY.yaml       merged left to right after it, later keys win: a baseline (baselines/sft, baselines/ls)
                     and/or a variant (variants/qlora, variants/authors_code, ...), files or shipped names
  --key value        overrides any key of the files (--learning_rate 1e-4 --output_dir outputs/try)
  --dry-run          print the `accelerate launch` command and check the recipe, model, output folder and data
                     paths, reading only; nothing is launched

launch (to `accelerate launch`, from the recipe or as flags):
  {launch}
  accelerate_config: a shipped config's name (multi_gpu, deepspeed_zero3, fsdp2, ...), one of TRL's names (zero1
  zero2 zero3 fsdp1 fsdp2 multi_gpu single_gpu), or a path; its DeepSpeed JSON is read relative to it

smoothing keys (UALConfig; every SFTConfig and ModelConfig key works too):
{keys}

  --help-all         every key: UALConfig (TRL's SFTConfig plus the above), ModelConfig, the data arguments
  python -m ual.train runs one process with the same arguments (what each rank runs under accelerate)"""


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged (a notebook or pytest swaps it between runs)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _log_to_console(training_args: UALConfig) -> None:
    """``[ual]`` lines from the main process only (the other ranks would repeat every warning)."""
    if logger.handlers:
        return
    if training_args.should_log:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[ual] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def check_model_args(model_args: ModelConfig) -> None:
    """Model-side mistakes that would otherwise surface only after data preparation or a (long) model load."""
    name = model_args.model_name_or_path
    if not name:
        raise UsageError("the recipe has no model_name_or_path")
    check_model_reachable(name, model_args.model_revision)
    if model_args.use_peft and "lm_head" in (model_args.lora_target_modules or []):
        raise UsageError(
            "lora_target_modules includes 'lm_head': the smoothed loss reads lm_head's weight directly, so an adapter "
            "there would never be trained. Remove 'lm_head' from lora_target_modules."
        )
    if (model_args.load_in_4bit or model_args.load_in_8bit) and importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError("load_in_4bit/load_in_8bit (QLoRA) needs bitsandbytes: pip install bitsandbytes")


def check_model_reachable(name: str, revision: str | None) -> None:
    """A local folder, a hub model in the local cache (offline), or a hub model the hub answers for, in seconds:
    transformers would otherwise retry for a minute after the data is prepared."""
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        return
    here = "" if os.path.isabs(path) else f" (a relative path is looked up from the current folder, {os.getcwd()})"
    if os.path.exists(path):
        raise UsageError(f"model_name_or_path {name!r} is a file; point it at the model's folder")
    if looks_local(name):
        raise UsageError(f"model_name_or_path {name!r}: no such folder{here}")
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    nowhere = f"model_name_or_path {name!r}: no such folder{here}, and as a hub model id"
    cached = isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json", revision=revision), str)
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        if not cached:
            raise UsageError(f"{nowhere} it is not in the local cache while HF_HUB_OFFLINE is set. Download it where "
                             f"there is network (`hf download {name}`), or point model_name_or_path at a local copy")
        return
    try:
        huggingface_hub.model_info(name, revision=revision, timeout=10)
    except GatedRepoError:
        raise UsageError(f"model_name_or_path {name!r} is gated: accept its licence on the hub and log in "
                         "(`hf auth login`)") from None
    except RevisionNotFoundError:
        raise UsageError(f"model_name_or_path {name!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise UsageError(f"{nowhere} the hub has no such model (or it is private: log in with `hf auth login`)") from None
    except Exception as exc:  # no network, DNS, proxy, timeout: all mean the hub cannot be asked
        advice = ("it is in the local cache: set HF_HUB_OFFLINE=1 to train from the cached copy" if cached else
                  f"it is not in the local cache either: download it where there is network (`hf download {name}`) "
                  "and point model_name_or_path at that folder")
        raise UsageError(f"{nowhere} the hub cannot be reached ({type(exc).__name__}: {exc}); {advice}") from None


def resume_arg(value):
    """``--resume_from_checkpoint true`` means the last complete checkpoint in output_dir; ``false`` none."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true" or None
    return value or None


@dataclass
class Run:
    """A parsed and checked command line: what to train, and where a resume starts."""

    training_args: UALConfig
    model_args: ModelConfig
    data_args: UALDataArguments
    resume: Resume | None


def preflight(argv: list[str] | None = None) -> Run:
    """Every check of the recipe, flags, model and output folder; reads only, loads no data or model."""
    training_args, model_args, data_args = parse_args(argv)
    _log_to_console(training_args)
    check_model_args(model_args)
    check_speedups(training_args, model_args.attn_implementation)
    if data_args.dataset_streaming and training_args.max_steps <= 0:
        raise UsageError("dataset_streaming: true needs max_steps (a stream has no length, so epochs cannot be "
                         "counted): set max_steps to the number of optimizer steps to train")
    requested = resume_arg(training_args.resume_from_checkpoint)
    check_output_dir(training_args.output_dir, overwrite=training_args.overwrite_output_dir, resume=requested)
    resume = resolve_resume(requested, training_args.output_dir)
    return Run(training_args, model_args, data_args, resume)


def load_data(run: Run):
    """The checked training mixture and the held-out eval set (or None); every bad row fails here."""
    streaming = run.data_args.dataset_streaming
    dataset = load_mixture(run.data_args.datasets, run.training_args, streaming)
    eval_dataset = None
    if run.data_args.eval_datasets:
        eval_dataset = load_mixture(run.data_args.eval_datasets, run.training_args, streaming)
    if run.data_args.test_split_size is not None:
        split = dataset.train_test_split(test_size=run.data_args.test_split_size, seed=run.training_args.seed)
        dataset, eval_dataset = split["train"], split["test"]
    return dataset, eval_dataset


def main(argv: list[str] | None = None) -> UALTrainer:
    run = preflight(argv)
    training_args, model_args = run.training_args, run.model_args
    # Data first: every bad score, column or path fails here, before a model is loaded
    dataset, eval_dataset = load_data(run)
    logger.info("training on %s from %d dataset(s)", "a stream" if run.data_args.dataset_streaming
                else f"{len(dataset)} samples", len(run.data_args.datasets))

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
    result = trainer.train(resume_from_checkpoint=run.resume.checkpoint if run.resume else None)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card(model_name=os.path.basename(os.path.normpath(training_args.output_dir)))
    logger.info("saved model, tokenizer, model card (README.md) and %s to %s", "ual_smoothing.json",
                training_args.output_dir)
    if training_args.push_to_hub:  # as `trl sft` does: the final model, its card and ual_smoothing.json
        hub_datasets = [entry.path for entry in run.data_args.datasets if not looks_local(entry.path)]
        trainer.push_to_hub(dataset_name=hub_datasets[0] if len(hub_datasets) == 1 else None)
        logger.info("pushed %s to the Hub as %s (with everything else in it, eval/ included)",
                    training_args.output_dir, trainer.hub_model_id)
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    return trainer


def cli(argv: list[str] | None = None) -> int:
    """``python -m ual.train``: the user's mistakes are one ``error:`` line (``UAL_DEBUG=1``: the traceback)."""
    stop_with_parent()
    try:
        main(argv)
    except UsageError as exc:
        if debug_requested():
            raise
        rank = os.environ.get("RANK")
        return report("ual train" + (f" (rank {rank})" if rank and os.environ.get("WORLD_SIZE", "1") != "1" else ""), exc)
    except KeyboardInterrupt:
        print("ual train: interrupted; complete checkpoints are kept (resume with --resume_from_checkpoint true)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
