"""pytest plugin for run.py: fills names the installed TRL lacks, and swaps SFTTrainer for UALTrainer on UAL runs."""

import dataclasses
import importlib
import importlib.util
import os

import trl

import_utils = importlib.import_module("trl.import_utils")
sft_trainer = importlib.import_module("trl.trainer.sft_trainer")

RUN = os.environ.get("UAL_TRL_TESTS_TRAINER", "sft")


def _missing(name):
    def placeholder(*args, **kwargs):
        raise NotImplementedError(f"{name} is not in the installed trl {trl.__version__}")
    return placeholder


# testing_utils imports availability checks by name; a newer test module may ask for ones trl 1.16 lacks
for _name in ("is_joblib_available",):
    if not hasattr(import_utils, _name):
        setattr(import_utils, _name, lambda: importlib.util.find_spec("joblib") is not None)
for _name in ("_chunked_cross_entropy_loss", "_patch_chunked_ce_lm_head", "dft_loss"):
    if not hasattr(sft_trainer, _name):
        setattr(sft_trainer, _name, _missing(_name))

if RUN != "sft":
    from ual.config import UALConfig
    from ual.trainer import UALTrainer, _as_ual_config

    SMOOTHING = {"ual-constant": dict(smoothing_strategy="constant", smoothing_mean=0.1),
                 "ual-none": dict(smoothing_strategy="none")}[RUN]

    class UALTrainerAsSFT(UALTrainer):
        """What a user gets by swapping the class name: the test's config converted, smoothing set per run."""

        def __init__(self, model, args=None, *rest, **kwargs):
            if args is None:
                name = model if isinstance(model, str) else model.config._name_or_path
                args = UALConfig(f"{str(name).rstrip('/').split('/')[-1]}-SFT", **SMOOTHING)
            else:
                args = dataclasses.replace(_as_ual_config(args), **SMOOTHING)
            super().__init__(model, args, *rest, **kwargs)

    trl.SFTTrainer = UALTrainerAsSFT
    sft_trainer.SFTTrainer = UALTrainerAsSFT
