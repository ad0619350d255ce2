"""UALTrainer: TRL's SFTTrainer with a per-sample label-smoothing loss.

What it changes, hook by hook (everything else is SFTTrainer's):
- ``__init__``: fits the uncertainty -> eps mapping on the whole training set (before any sharding; a streamed
  set gives ``uncertainty`` one pass over its scores, other strategies none),
  installs a collator that carries ``smoothing``, and adds a ``ual_smoothing`` path to the model's
  forward that returns per-token smoothed losses from the final hidden states (no [B, T, V] logits).
- ``_prepare_dataset``: TRL tokenizes and truncates (the per-sample eps column rides along), then
  eps is expanded per token and packed with ``input_ids``/``labels`` by ``trl.pack_dataset``.
- ``_set_signature_columns_if_needed``: keeps ``smoothing`` in the dataloader.
- ``compute_loss``: normalised like SFTTrainer's default NLL (``loss_normalization: token``) or per sample
  (``sample``), plus MoE's router auxiliary loss by SFTTrainer's rule and the same metrics;
  ``_get_num_items_in_batch`` counts samples for ``sample``.
- ``train``: refuses an ``output_dir`` that holds a run and resumes only from a complete checkpoint (``run_folder``).
- ``save_model``: writes the smoothing settings and statistics next to every saved model, readable by the group.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import types
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from transformers import TrainerCallback
from transformers.utils import ModelOutput
from trl import SFTTrainer, pack_dataset
from trl.trainer.utils import maybe_gather_lm_head_ctx

from . import run_folder
from .config import UALConfig
from .errors import UsageError
from .data import (
    SAMPLE_SMOOTHING,
    TOKEN_SMOOTHING,
    SmoothingCollator,
    applied_smoothing,
    trained_token_counts,
    attach_smoothing,
    attach_smoothing_stream,
    expand_smoothing,
)
from .files import apply_umask, write_atomic
from .loss import sample_ids, sample_token_weights, smoothed_cross_entropy
from .run_folder import SETTINGS_FILE

logger = logging.getLogger("ual")
def logit_scale_of(text_config) -> float:
    """The factor a model applies to its logits, read from its config the way TRL 1.16's fused head reads it:
    Cohere's ``logit_scale``, Muse Glimmer's ``output_multiplier``, Falcon-H1's ``lm_head_multiplier``, and
    ``logits_scaling``, a divisor for Granite and MiniCPM3 but a factor for HyperCLOVA X. None means unscaled."""
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        value = getattr(text_config, name, None)
        if value is not None:
            return float(value)
    scaling = getattr(text_config, "logits_scaling", None)
    if scaling is not None:
        return float(scaling) if text_config.model_type == "hyperclovax" else 1.0 / float(scaling)
    return 1.0


@dataclass
class SmoothedLMOutput(ModelOutput):
    """Per trained token (label != -100, after the causal shift): loss, metrics and eps."""

    per_token_loss: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None
    smoothing: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None
    sample_weight: torch.Tensor | None = None  # 1/n_i: each sample's trained tokens sum to 1
    num_samples: int | None = None  # samples with at least one trained token
    aux_loss: torch.Tensor | None = None  # MoE load-balancing loss, when called with output_router_logits=True


def router_aux_loss(model, text_config, router_logits, attention_mask) -> torch.Tensor:
    """The MoE load-balancing loss as TRL 1.16's fused head computes it: Mixtral's ``load_balancing_loss_func``,
    which every MoE family in transformers shares, over the backbone's router logits (no mask when padding-free)."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    num_experts = getattr(text_config, "num_experts", None) or getattr(model, "num_experts")
    return load_balancing_loss_func(router_logits, num_experts, text_config.num_experts_per_tok, attention_mask)


def check_speedups(args, attn_implementation: str | None = None) -> None:
    """Kernel options whose package is missing fail here, before a model loads, with how each combines with the
    smoothed head (which reads the final hidden states, so layer and attention kernels work under it)."""
    init = args.model_init_kwargs or {}
    attn = attn_implementation or init.get("attn_implementation")
    if args.use_liger_kernel:
        if importlib.util.find_spec("liger_kernel") is None:
            raise UsageError("use_liger_kernel needs the liger-kernel package (pip install liger-kernel). With "
                             "UALTrainer, as with SFTTrainer, only Liger's layer kernels apply; its fused "
                             "cross-entropy would replace the smoothed loss head")
        if (args.liger_kernel_config or {}).get("fused_linear_cross_entropy"):
            raise UsageError("liger_kernel_config fused_linear_cross_entropy: true would replace the smoothed loss "
                             "head; UALTrainer computes the loss itself, without the full logits")
    if init.get("use_kernels") and importlib.util.find_spec("kernels") is None:
        raise UsageError("model_init_kwargs use_kernels: true needs the kernels package (pip install kernels); its "
                         "hub kernels replace layers, and the smoothed head works on top of them")
    if attn in ("flash_attention_2", "flash_attention_3"):
        package = "flash_attn" if attn == "flash_attention_2" else "flash_attn_interface"
        if importlib.util.find_spec(package) is None:
            raise UsageError(f"attn_implementation {attn} needs the {package} package and a CUDA GPU; or use sdpa "
                             "(any attention implementation works with the smoothed head)")
    elif isinstance(attn, str) and "/" in attn and importlib.util.find_spec("kernels") is None:
        raise UsageError(f"attn_implementation {attn} is a hub kernel: it needs the kernels package (pip install "
                         "kernels) and the hub, or a local cache of it")


def resolve_loss_compile(requested: bool | None, device: torch.device) -> bool:
    """``loss_compile`` for this device: None picks it (CUDA with Triton); True must be able to compile here."""
    has_triton = importlib.util.find_spec("triton") is not None
    if requested is None:
        return device.type == "cuda" and has_triton
    if requested and device.type == "cuda" and not has_triton:
        raise UsageError("loss_compile=True on CUDA needs Triton (pip install triton); or set loss_compile: false")
    if requested and device.type == "cpu" and not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")):
        raise UsageError("loss_compile=True on a CPU needs a C++ compiler (g++) for torch.compile; or set "
                         "loss_compile: false")
    return requested


def add_smoothed_lm_head(model, convention: str, chunk_size: int | None, compiled: bool = False,
                         prior: torch.Tensor | None = None) -> None:
    """Give ``model.forward`` a ``ual_smoothing=`` path; without it the forward is unchanged (generation, TRL).
    ``prior [V]``: smooth toward it instead of the convention's uniform distribution."""
    text_config = model.config.get_text_config()
    softcap = getattr(text_config, "final_logit_softcapping", None)  # Gemma-2/3: c * tanh(z / c), after the scale
    logit_scale = logit_scale_of(text_config)
    previous_forward = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, ual_smoothing=None, ual_sample_ids=None, ual_per_sample=False, labels=None, **kwargs):
        if ual_smoothing is None:
            return previous_forward(*args, labels=labels, **kwargs)
        kwargs["use_cache"] = False
        extra = labels.shape[1] - ual_smoothing.shape[1]
        if extra > 0:  # PEFT prompt learning prepended virtual tokens to the labels (as -100), not to our columns
            ual_smoothing = torch.nn.functional.pad(ual_smoothing, (extra, 0))
            ual_sample_ids = torch.cat([ual_sample_ids[:, :1].expand(-1, extra), ual_sample_ids], dim=1)
        backbone = self.base_model(*args, **kwargs)
        hidden = backbone.last_hidden_state[:, :-1]
        labels, eps = labels[:, 1:], ual_smoothing[:, 1:]
        lm_head = self.get_output_embeddings()
        weight, bias = lm_head.weight, lm_head.bias
        if hasattr(weight, "full_tensor"):  # FSDP2 shards parameters as DTensors
            weight = weight.full_tensor()
            bias = bias.full_tensor() if bias is not None else None
        hidden, labels, eps = hidden.to(weight.device), labels.to(weight.device), eps.to(weight.device)
        mask = labels != -100
        sample_weight, num_samples = sample_token_weights(ual_sample_ids[:, 1:].to(mask.device)[mask])
        with maybe_gather_lm_head_ctx(weight, bias):  # ZeRO-3: the head is read directly, not through its module
            out = smoothed_cross_entropy(
                hidden[mask], weight, labels[mask], eps[mask], convention=convention, bias=bias, chunk_size=chunk_size,
                logit_scale=logit_scale, softcap=softcap, compiled=compiled, token_weight=sample_weight if ual_per_sample else None,
                prior=prior,
            )
        aux = None
        if kwargs.get("output_router_logits"):
            aux = router_aux_loss(self, text_config, backbone.router_logits, kwargs.get("attention_mask"))
        return SmoothedLMOutput(
            per_token_loss=out.loss, entropy=out.entropy, is_top1=out.is_top1, smoothing=eps[mask], label_mask=mask,
            sample_weight=sample_weight, num_samples=num_samples, aux_loss=aux,
        )

    model.forward = types.MethodType(forward, model)


class _LogSmoothingOnce(TrainerCallback):
    """At the start of training, the fitted mapping and the mean eps (overall, per source, applied) go to every
    tracker of ``report_to`` as ``ual/...`` values, so runs can be compared there; the settings travel in the
    arguments every tracker records. They are handed to the trackers' ``on_log`` directly, not through
    ``Trainer.log``: ``state.log_history`` stays SFTTrainer's (tools and TRL's tests read its first entry)."""

    def __init__(self, trainer: "UALTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        values = self.trainer.smoothing_summary()
        if values:
            handler = self.trainer.callback_handler
            handler.on_log(args, state, control, logs=values)


def _as_ual_config(args):
    """A ``TrainingArguments`` (or ``SFTConfig``) becomes a ``UALConfig`` with the same values and the smoothing
    defaults, as SFTTrainer turns a ``TrainingArguments`` into an ``SFTConfig``."""
    from transformers import TrainingArguments

    if not isinstance(args, TrainingArguments):
        raise TypeError(f"UALTrainer needs a UALConfig (or TrainingArguments), got {type(args).__name__}")
    values = args.to_dict()
    for key in values:  # to_dict masks every *_token field ('<EOS_TOKEN>'): hub_token, and SFTConfig's eos/pad
        if key.endswith("_token"):
            values[key] = getattr(args, key)
    known = UALConfig.__dataclass_fields__
    logger.info("UALTrainer: %s converted to UALConfig (smoothing settings at their defaults: strategy %r, mean %s)",
                type(args).__name__, known["smoothing_strategy"].default, known["smoothing_mean"].default)
    return UALConfig(**{k: v for k, v in values.items() if k in known and known[k].init})


def _uniform_token_smoothing(dataset, args: UALConfig):
    """``skip_prepare_dataset`` without a per-token column: strategies that give every sample the same eps
    (``none``, ``constant``) need no scores, so the column is that eps at every position; others need the column."""
    if args.smoothing_strategy not in ("none", "constant"):
        raise UsageError(f"skip_prepare_dataset=True with smoothing_strategy {args.smoothing_strategy!r} needs a "
                         f"per-token {TOKEN_SMOOTHING!r} column next to input_ids/labels (only 'none' and 'constant' "
                         "can fill it in)")
    eps = 0.0 if args.smoothing_strategy == "none" else float(args.smoothing_mean)
    extra = {"desc": "Uniform smoothing"} if isinstance(dataset, Dataset) else {}
    return dataset.map(lambda row: {TOKEN_SMOOTHING: [eps] * len(row["input_ids"])}, **extra)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


class UALTrainer(SFTTrainer):
    """SFTTrainer whose loss gives every sample its own label smoothing, derived from its uncertainty."""

    _tag_names = ["trl", "sft", "ual"]
    _name = "UAL"
    _paper = {  # TRL's card template links and cites it
        "title": "Uncertainty Aware Learning for Language Model Alignment",
        "id": "2406.04854",
        "citation": """@inproceedings{wang2024uncertainty,
    title     = {{Uncertainty Aware Learning for Language Model Alignment}},
    author    = {Yikun Wang and Rui Zheng and Liang Ding and Qi Zhang and Dahua Lin and Dacheng Tao},
    booktitle = {Proceedings of the 62nd Annual Meeting of the Association for Computational Linguistics},
    pages     = {11087--11099},
    year      = 2024
}""",
    }

    def __init__(self, model, args: UALConfig | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = UALConfig(f"{str(name).rstrip('/').split('/')[-1]}-UAL")
        elif not isinstance(args, UALConfig):
            args = _as_ual_config(args)
        if data_collator is not None:
            raise UsageError("UALTrainer builds its own collator (it must carry the smoothing column); drop data_collator")
        if args.label_smoothing_factor:
            raise UsageError(
                "label_smoothing_factor is SFTTrainer's global smoothing; with UALTrainer use "
                "smoothing_strategy='constant' and smoothing_mean instead"
            )
        if args.loss_type != "nll":
            raise UsageError(f"UALTrainer smooths the NLL loss; loss_type={args.loss_type!r} is not supported")
        loss_compile = resolve_loss_compile(args.loss_compile, args.device)  # before the model loads
        check_speedups(args)
        if train_dataset is None:
            raise UsageError("`train_dataset` is required")  # SFTTrainer's message and type (ValueError)
        streamed = isinstance(train_dataset, IterableDataset)
        if not isinstance(train_dataset, Dataset) and not streamed:
            raise TypeError(f"UALTrainer needs a datasets.Dataset or IterableDataset (got {type(train_dataset).__name__})")
        if streamed and args.smoothing_prior == "unigram":
            raise UsageError("smoothing_prior 'unigram' counts the tokens of the whole training set before training; "
                             "a streamed (IterableDataset) training set cannot be counted: load it without streaming")
        skip = bool((args.dataset_kwargs or {}).get("skip_prepare_dataset"))
        fitted_on = None
        if skip:
            if TOKEN_SMOOTHING not in (train_dataset.column_names or []):
                train_dataset = _uniform_token_smoothing(train_dataset, args)
            self.smoothing_map, self.smoothing_report = None, None
        elif streamed:
            train_dataset, self.smoothing_map, self.smoothing_report, fitted_on = attach_smoothing_stream(
                train_dataset, args, "train_dataset"
            )
        else:
            train_dataset, self.smoothing_map, self.smoothing_report = attach_smoothing(
                train_dataset, args, "train_dataset"
            )
            fitted_on = (len(train_dataset), float(sum(train_dataset[SAMPLE_SMOOTHING])))
        if not skip:
            logger.info("UAL smoothing (%s): %s", args.smoothing_strategy, self.smoothing_report.overall)
            for source, stats in self.smoothing_report.per_source.items():
                logger.info("UAL smoothing for %s: %s", source, stats)
        self.dropped_samples: dict[str, int] = {}
        self.applied_smoothing: dict | None = None

        super().__init__(model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, **kwargs)

        if self._is_vision_dataset:
            raise UsageError("UALTrainer does not support vision datasets yet")
        self.data_collator = SmoothingCollator(
            pad_token_id=self._tokenizer.pad_token_id,
            padding_free=self.padding_free,
            pad_to_multiple_of=args.pad_to_multiple_of,
        )
        base = self.model.get_base_model() if is_peft_model(self.model) else self.model
        self.unigram_counts = None
        if args.smoothing_prior == "unigram":
            vocab = base.config.get_text_config().vocab_size
            self.unigram_counts = trained_token_counts(self.train_dataset, self.data_collator, vocab)
            logger.info("unigram smoothing prior: %d trained label tokens, %d of %d token ids seen",
                        int(self.unigram_counts.sum()), int((self.unigram_counts > 0).sum()), vocab)
        add_smoothed_lm_head(base, convention=args.smoothing_convention, chunk_size=args.loss_chunk_size,
                             compiled=loss_compile, prior=self.unigram_prior)
        logger.info("UAL loss head: chunk %s tokens, %s; training on %s", args.loss_chunk_size or "automatic",
                    "compiled (torch.compile)" if loss_compile else "eager", args.device)
        if self.smoothing_report is not None:
            self._check_ranks_agree(*fitted_on)
        self.add_callback(_LogSmoothingOnce(self))

    @property
    def unigram_prior(self) -> torch.Tensor | None:
        """pi_v = (c_v + 1) / (N + V) over the trained label tokens, in float64; None for the uniform prior."""
        if self.unigram_counts is None:
            return None
        c = self.unigram_counts.to(torch.float64)
        return (c + 1) / (c.sum() + c.numel())

    def _prior_record(self) -> dict | None:
        """What rebuilds the unigram prior (its counts, sparse) and identifies it (sha256 of the int64 counts)."""
        if self.unigram_counts is None:
            return None
        c = self.unigram_counts
        return {"tokens": int(c.sum()), "vocab": c.numel(),
                "counts_sha256": hashlib.sha256(c.numpy().astype("<i8").tobytes()).hexdigest(),
                "counts": {str(i): int(c[i]) for i in torch.nonzero(c).view(-1).tolist()}}

    def smoothing_summary(self) -> dict[str, float]:
        """The mapping and the mean eps as flat numbers (``ual/...``), for trackers."""
        values = {}
        if self.smoothing_report is not None:
            values.update({f"ual/mapping/{k}": float(v) for k, v in self.smoothing_report.mapping.items()
                           if isinstance(v, (int, float))})
            if self.smoothing_report.mean is not None:
                values["ual/eps_mean"] = float(self.smoothing_report.mean)
            for source, st in self.smoothing_report.per_source.items():
                values[f"ual/source/{source}/eps_mean"] = float(st["smoothing_mean"])
        if self.applied_smoothing:
            values["ual/applied/sample_mean"] = float(self.applied_smoothing["sample_mean"])
            values["ual/applied/token_mean"] = float(self.applied_smoothing["token_mean"])
        return values

    def _check_ranks_agree(self, n_samples: int, eps_sum: float) -> None:
        """Every rank must have fitted the same mapping on the same samples (it is fitted before sharding)."""
        m = self.smoothing_map
        local = torch.tensor(
            [[m.scale, m.offset, m.lo, m.hi, m.unit, n_samples, eps_sum]], dtype=torch.float64,
            device=self.accelerator.device,
        )
        ranks = self.accelerator.gather(local)
        if not torch.allclose(ranks, ranks[:1].expand_as(ranks), rtol=1e-9, atol=1e-12):
            raise RuntimeError(
                "the smoothing mapping differs between ranks (the ranks loaded different training data?): "
                f"{ranks.tolist()}"
            )
        logger.info(
            "smoothing mapping identical on all %d rank(s): scale=%.6g, sum of eps over %d samples=%.6f",
            ranks.shape[0], m.scale, n_samples, eps_sum,
        )

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """SFTTrainer's train, guarded: never over a finished run, and resume only from a complete checkpoint.

        ``resume_from_checkpoint=True`` picks the newest complete checkpoint (a kill while saving leaves the newest
        one incomplete; it is skipped with a warning). Without a resume, an ``output_dir`` that holds a run is
        refused unless ``overwrite_output_dir``, which first removes that run's files.
        """
        run_folder.check_output_dir(self.args.output_dir, overwrite=self.args.overwrite_output_dir,
                                    resume=resume_from_checkpoint)
        resume = run_folder.resolve_resume(resume_from_checkpoint, self.args.output_dir)
        if resume is None and self.args.overwrite_output_dir:
            if self.args.should_save:
                run_folder.clear_run(self.args.output_dir)
            self.accelerator.wait_for_everyone()  # on every rank alike: no rank starts writing before the removal
        elif resume is not None:
            if self.smoothing_report is not None:
                self._check_resume(resume.checkpoint)
            logger.info("resuming from %s (global step %d)", resume.checkpoint, resume.step)
        output = super().train(resume_from_checkpoint=resume.checkpoint if resume else None, trial=trial, **kwargs)
        first = resume.step + 1 if resume else 1
        output.metrics["train_loss_first_step"] = first  # train_loss is the mean over these steps
        output.metrics["train_loss_last_step"] = output.global_step
        if resume:
            output.metrics["resumed_from_step"] = resume.step
            logger.info("train_loss %.4f is the mean over steps %d-%d, the steps run since the resume at step %d; "
                        "trainer_state.json's log_history holds the whole run", output.training_loss, first,
                        output.global_step, resume.step)
        return output

    def _check_resume(self, checkpoint: str) -> None:
        """A complete checkpoint must come from UALTrainer with the same smoothing settings and mapping."""
        saved_path = os.path.join(checkpoint, SETTINGS_FILE)
        if not os.path.isfile(saved_path):
            raise UsageError(
                f"cannot resume from {checkpoint}: it is a complete Trainer checkpoint but has no {SETTINGS_FILE}, so "
                "it was not written by UALTrainer; its smoothing cannot be checked against this run's"
            )
        with open(saved_path) as f:
            saved = json.load(f)
        now = {"settings": self.args.smoothing_settings(), "mapping": self.smoothing_report.mapping}
        defaults = {key: UALConfig.__dataclass_fields__[key].default for key in now["settings"]}
        then = {"settings": {**defaults, **saved["settings"]}, "mapping": saved["statistics"]["mapping"]}  # keys added
        # since that checkpoint was written held their defaults then
        diffs = [
            f"{part}.{key}: checkpoint {then[part].get(key)!r}, now {value!r}"
            for part in ("settings", "mapping")
            for key, value in now[part].items()
            if not _same(then[part].get(key), value)
        ]
        if diffs:
            raise UsageError(f"cannot resume from {checkpoint} with different smoothing: " + "; ".join(diffs))
        prior_then = (saved.get("unigram_prior") or {}).get("counts_sha256")
        prior_now = (self._prior_record() or {}).get("counts_sha256")
        if prior_then != prior_now:
            raise UsageError(f"cannot resume from {checkpoint}: its unigram smoothing prior (counts sha256 {prior_then}) "
                             f"differs from this run's ({prior_now}): the training set or its tokenisation changed")

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        streamed = isinstance(dataset, IterableDataset)
        if SAMPLE_SMOOTHING not in (dataset.column_names or []):  # an eval set: apply the mapping fitted on train
            if self.smoothing_map is None:
                raise UsageError(f"{dataset_name} dataset has no smoothing column and no mapping was fitted")
            if streamed:
                dataset, *_ = attach_smoothing_stream(dataset, args, f"{dataset_name}_dataset", self.smoothing_map)
            else:
                dataset, _, report = attach_smoothing(dataset, args, f"{dataset_name}_dataset",
                                                      fitted=self.smoothing_map)
                logger.info("UAL smoothing for %s: %s", dataset_name, report.overall)
        before = None if streamed else len(dataset)
        # Tokenize, build labels and truncate with TRL (other columns ride along). When packing, TRL packs untruncated
        # sequences and lets the packing strategy truncate, split or wrap them, so truncation is left to packing here too.
        max_length = args.max_length
        if packing:
            args.max_length = None
        try:
            dataset = super()._prepare_dataset(dataset, processing_class, args, False, formatting_func, dataset_name)
        finally:
            args.max_length = max_length
        dropped = 0 if streamed else before - len(dataset)  # a stream drops rows as they pass, uncounted
        self.dropped_samples[dataset_name] = dropped
        if dropped:
            logger.warning(
                "%s: dropped %d of %d samples whose every label was masked after truncation to max_length=%s",
                dataset_name, dropped, before, max_length,
            )
        if dataset_name == "train" and streamed:
            logger.info("the smoothing applied after tokenisation is not measured for a streamed training set")
        elif dataset_name == "train":
            self.applied_smoothing = applied_smoothing(dataset)
            logger.info("smoothing applied in training (after tokenisation): mean %.4f per sample, %.4f per trained "
                        "token (loss_normalization %r applies the %s mean)", self.applied_smoothing["sample_mean"],
                        self.applied_smoothing["token_mean"], args.loss_normalization,
                        "first" if args.loss_normalization == "sample" else "second")
        dataset = expand_smoothing(dataset, num_proc=args.dataset_num_proc)
        if packing:
            # a stream packs each block of rows as it is read (datasets' batched map), as SFTTrainer packs one
            dataset = pack_dataset(dataset, args.max_length, args.packing_strategy,
                                   {} if streamed else {"num_proc": args.dataset_num_proc})
            if args.shuffle_dataset:
                dataset = dataset.shuffle(seed=args.seed)
        return dataset

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if TOKEN_SMOOTHING not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, TOKEN_SMOOTHING]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        smoothing = inputs.pop(TOKEN_SMOOTHING, None)
        if smoothing is None:
            raise KeyError(f"the batch has no {TOKEN_SMOOTHING!r} tensor: UALTrainer's collator was replaced")
        inputs["use_cache"] = False
        if self.aux_loss_enabled:  # MoE: the router logits, for the load-balancing loss (as SFTTrainer)
            inputs["output_router_logits"] = True
        per_sample = self.args.loss_normalization == "sample"
        outputs = model(**inputs, ual_smoothing=smoothing, ual_sample_ids=sample_ids(inputs), ual_per_sample=per_sample)
        # 'token': SFTTrainer's normalisation (eps = 0 gives its loss and gradients): the sum over trained tokens over
        # their number in the global batch. 'sample': the head weighted each token by 1/n_i, so the sum is one per
        # sample, over the number of samples (num_items_in_batch counts samples then: _get_num_items_in_batch)
        local = outputs.num_samples if per_sample else outputs.label_mask.sum()
        count = local if num_items_in_batch is None else num_items_in_batch
        loss = outputs.per_token_loss.sum() / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        if self.aux_loss_enabled:
            # SFTTrainer's rule: a per-micro-batch mean that DDP averages across ranks; with num_items_in_batch the
            # Trainer leaves gradient accumulation to the loss, so it is averaged over the accumulation steps
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss.detach()).mean().item())

        gather = self.accelerator.gather_for_metrics
        device = outputs.label_mask.device
        num_valid = gather(outputs.label_mask.sum()).sum()
        num_samples = gather(torch.tensor(outputs.num_samples, device=device)).sum()
        eps = outputs.smoothing.detach().double()
        sums = {  # (total, count) of each logged mean
            "entropy": (gather(outputs.entropy.detach().sum()).sum(), num_valid),
            "mean_token_accuracy": (gather(outputs.is_top1.sum()).sum(), num_valid),
            "smoothing/mean": (gather(eps.sum()).sum(), num_valid),  # token-weighted: what 'token' applies
            "smoothing/sample_mean": (gather((eps * outputs.sample_weight).sum()).sum(), num_samples),
        }
        for key, (total, n) in sums.items():
            self._metrics[mode][key].append((total / n).item() if n > 0 else 0.0)
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            self._total_train_tokens += gather(local).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

        if return_outputs:  # logits for compute_metrics: an extra no-grad forward, as in SFTTrainer
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            return loss, outputs
        return loss

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """With ``loss_normalization: sample``, the samples (with a trained token) of the accumulated global batch,
        counted by transformers' own rule for tokens: it counts labels that are not -100 after the shift, gathered
        across processes and scaled for parallel layouts, so it is handed one such label per sample."""
        if self.args.loss_normalization != "sample":
            return super()._get_num_items_in_batch(batch_samples, device)
        stand_ins = []
        for batch in batch_samples:
            trained = batch["labels"][:, 1:] != -100
            n = int(torch.unique(sample_ids(batch)[:, 1:][trained]).numel())
            stand_ins.append({"labels": torch.tensor([[-100] + [0] * n])})
        return super()._get_num_items_in_batch(stand_ins, device)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's card (it links and cites the paper through ``_paper``), plus what a reader needs to judge a UAL
        model: the smoothing settings, the fitted mapping, the mean eps per source and what training applied."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        path = os.path.join(self.args.output_dir, "README.md")
        if not self.is_world_process_zero() or not os.path.isfile(path):
            return
        text = Path(path).read_text(encoding="utf-8")
        base = getattr(self.model.config, "_name_or_path", None) or "a local model"
        text = text.replace("[None](https://huggingface.co/None)", f"`{base}` (a local model)")
        marker = "### Framework versions"
        section = self._smoothing_card()
        text = text.replace(marker, section + marker, 1) if marker in text else text + "\n" + section
        write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def _smoothing_card(self) -> str:
        lines = ["### Uncertainty-aware smoothing", "",
                 "Each training sample had its own label smoothing ε, from its uncertainty score "
                 "(`ual_smoothing.json` beside the weights holds all of this as numbers).", "",
                 "| setting | value |", "|---|---|"]
        lines += [f"| `{key}` | {value} |" for key, value in self.args.smoothing_settings().items()]
        if self.smoothing_report is not None:
            mapping = ", ".join(f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}"
                                for k, v in self.smoothing_report.mapping.items())
            lines += ["", f"Fitted mapping: {mapping}.", f"ε over the training samples: {self.smoothing_report.overall}."]
            if self.smoothing_report.per_source:
                lines += ["", "| source | rows | mean ε | min ε | max ε | mean uncertainty |", "|---|---:|---:|---:|---:|---:|"]
                for source, st in self.smoothing_report.per_source.items():
                    u = st.get("uncertainty_mean")
                    lines.append(f"| {source} | {st['rows']} | {st['smoothing_mean']:.4f} | {st['smoothing_min']:.4f} | "
                                 f"{st['smoothing_max']:.4f} | {'—' if u is None else f'{u:.1f}'} |")
        if self.applied_smoothing:
            a = self.applied_smoothing
            lines += ["", f"Applied in training (after tokenisation): mean ε {a['sample_mean']:.4f} per sample and "
                          f"{a['token_mean']:.4f} per trained token over {a['samples']} samples and {a['tokens']} "
                          f"tokens; `loss_normalization: {self.args.loss_normalization}` weighs the "
                          f"{'first' if self.args.loss_normalization == 'sample' else 'second'}."]
        return "\n".join(lines) + "\n\n"

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer copies a checkpoint's modelling files into output_dir and uploads that folder; the smoothing record
        goes with them, so every pushed revision says how it was trained (the card is already there: TRL writes it
        at each save)."""
        settings = os.path.join(checkpoint_folder, SETTINGS_FILE)
        if self.is_world_process_zero() and self.args.hub_strategy != "end" and os.path.isfile(settings):
            shutil.copy(settings, os.path.join(self.args.output_dir, SETTINGS_FILE))
        super()._push_from_checkpoint(checkpoint_folder)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save and os.path.isdir(output_dir):
            for name in os.listdir(output_dir):  # safetensors writes 0600 files: give them the user's umask
                if name.endswith(".safetensors"):
                    apply_umask(os.path.join(output_dir, name))
        if self.args.should_save and self.smoothing_report is not None:
            os.makedirs(output_dir, exist_ok=True)
            saved = {
                "settings": self.args.smoothing_settings(),
                "statistics": self.smoothing_report.to_dict(),
                "applied": self.applied_smoothing,
                "dropped_samples": self.dropped_samples,
            }
            if self.unigram_counts is not None:
                saved["unigram_prior"] = self._prior_record()
            write_atomic(os.path.join(output_dir, SETTINGS_FILE),
                         lambda tmp: Path(tmp).write_text(json.dumps(saved, indent=2)))
