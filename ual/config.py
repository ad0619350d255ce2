"""UALConfig: TRL's SFTConfig plus the per-sample smoothing settings."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import SFTConfig

from .errors import UsageError
from .loss import CONVENTIONS
from .mapping import STRATEGIES

SMOOTHING_FIELDS = (
    "smoothing_strategy",
    "smoothing_mean",
    "smoothing_min",
    "smoothing_max",
    "uncertainty_range",
    "smoothing_convention",
    "uncertainty_column",
    "smoothing_column",
    "missing_uncertainty",
    "loss_normalization",
    "smoothing_prior",
)
PRIORS = ("uniform", "unigram")


@dataclass
class UALConfig(SFTConfig):
    r"""
    Configuration for [`UALTrainer`]: every field of [`~trl.SFTConfig`] plus the smoothing settings.

    Each sample's uncertainty (a column of the training set, the paper's 0-99 judge score) is mapped to a
    label-smoothing value eps once over the whole training set; each trained token of that sample is then fitted
    with (1 - eps) * NLL + eps * (cross-entropy against the uniform part).
    """

    smoothing_strategy: str = field(
        default="uncertainty",
        metadata={
            "help": "How per-sample smoothing is derived. 'uncertainty': eps proportional to the score, mean "
            "`smoothing_mean`, clipped at `smoothing_max` (the paper's). 'linear': `uncertainty_range` mapped onto "
            "[`smoothing_min`, `smoothing_max`]. 'constant': eps = `smoothing_mean` for every sample (label "
            "smoothing baseline). 'none': eps = 0 (plain SFT). 'explicit': eps read from `smoothing_column`.",
            "choices": list(STRATEGIES),
        },
    )
    smoothing_mean: float = field(
        default=0.1,
        metadata={"help": "Target mean eps over the training set ('uncertainty'), or the eps of 'constant'."},
    )
    smoothing_min: float = field(default=0.0, metadata={"help": "Lowest eps of the 'linear' strategy."})
    smoothing_max: float = field(
        default=0.99, metadata={"help": "Highest eps: the clip of 'uncertainty', the top of 'linear'."}
    )
    uncertainty_range: list[float] = field(
        default_factory=lambda: [0.0, 99.0],
        metadata={
            "help": "Declared [low, high] range of the uncertainty scores (the paper's rubric is 0-99). A score "
            "outside it is an error; 'linear' maps this range onto [smoothing_min, smoothing_max].",
            "nargs": 2,
        },
    )
    smoothing_convention: str = field(
        default="paper",
        metadata={
            "help": "Soft-target convention. 'paper': 1-eps on the gold token, eps/(V-1) on every other token (the "
            "UAL authors'). 'uniform': eps/V on every token plus 1-eps on the gold one (PyTorch's `label_smoothing`).",
            "choices": list(CONVENTIONS),
        },
    )
    smoothing_prior: str = field(
        default="uniform",
        metadata={
            "help": "Where the smoothed mass eps goes. 'uniform': over the vocabulary, as `smoothing_convention` says "
            "(the paper's). 'unigram': to pi_v = (c_v + 1) / (N + V), the add-one unigram distribution of the trained "
            "label tokens of the prepared training set (Pereyra et al. 2017), so the target is (1 - eps) onehot + "
            "eps pi and `smoothing_convention` does not apply. Not in the paper; in docs/ground_truth.md it did much worse "
            "than uniform (its mass lands on frequent tokens, which top-k sampling keeps).",
            "choices": list(PRIORS),
        },
    )
    uncertainty_column: str = field(
        default="uncertainty", metadata={"help": "Dataset column holding each sample's uncertainty score."}
    )
    smoothing_column: str = field(
        default="smoothing", metadata={"help": "Dataset column holding each sample's eps for strategy 'explicit'."}
    )
    missing_uncertainty: str = field(
        default="error",
        metadata={
            "help": "What a sample without a score gets: 'error' (stop and name the row) or a number used as its "
            "score, e.g. '50'."
        },
    )
    loss_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per chunk of the smoothed loss head. None: about 2**24 logits per chunk (64 MiB of "
            "float32), at least 512 tokens (measured in docs/benchmarks.md)."
        },
    )

    loss_compile: bool | None = field(
        default=None,
        metadata={
            "help": "Fuse the smoothed loss head's elementwise work with torch.compile (Triton on GPUs, C++ on CPUs): "
            "the same loss, with a few passes over each chunk of logits instead of about eight, after a one-off "
            "compilation at the first step. None: on when training on CUDA with Triton installed, off on CPUs, "
            "where the compilation costs more than a short run saves (docs/benchmarks.md)."
        },
    )

    loss_normalization: str = field(
        default="token",
        metadata={
            "help": "How the per-token losses of a (global, accumulated) batch are averaged. 'token': sum over every "
            "trained token / their number (TRL's rule): a 400-token answer weighs 40x a 10-token one. 'sample': the "
            "mean over each sample's trained tokens, then the mean over the samples, every sample weighing the same "
            "whatever its length (what the UAL authors' micro-batch-1 training did), counted across gradient "
            "accumulation and processes like TRL counts tokens. 'sample' refuses packing strategies that split a "
            "sample across sequences (bfd_split, wrapped).",
            "choices": ["token", "sample"],
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train into an output_dir that already holds a run (a model, trainer_state.json, checkpoints, "
            "ual_smoothing.json or eval/): its files are removed first, so nothing of the old run is mixed into the "
            "new one. Without it such a folder is refused before the model loads (resume it with "
            "--resume_from_checkpoint true instead). transformers 5 dropped its own field of this name."
        },
    )

    def __post_init__(self):
        if self.activation_checkpointing is None:
            # TRL's default gradient_checkpointing=True, under transformers 5's new name: the same setting, without
            # the deprecation warning every run would print about a key its recipe never set
            self.activation_checkpointing = self.gradient_checkpointing
        super().__post_init__()
        if self.smoothing_strategy not in STRATEGIES:
            raise UsageError(
                f"smoothing_strategy: unknown value {self.smoothing_strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        if self.smoothing_convention not in CONVENTIONS:
            raise UsageError(
                f"smoothing_convention: unknown value {self.smoothing_convention!r}; choose one of "
                f"{', '.join(CONVENTIONS)}"
            )
        if self.smoothing_prior not in PRIORS:
            raise UsageError(f"smoothing_prior: unknown value {self.smoothing_prior!r}; choose one of {', '.join(PRIORS)}")
        if len(self.uncertainty_range) != 2 or not self.uncertainty_range[0] < self.uncertainty_range[1]:
            raise UsageError(f"uncertainty_range must be [low, high] with low < high, got {self.uncertainty_range}")
        self.uncertainty_range = [float(x) for x in self.uncertainty_range]
        self.missing_uncertainty = str(self.missing_uncertainty)
        if self.missing_uncertainty != "error":
            try:
                fill = float(self.missing_uncertainty)
            except ValueError:
                raise UsageError(
                    f"missing_uncertainty must be 'error' or a number, got {self.missing_uncertainty!r}"
                ) from None
            low, high = self.uncertainty_range
            if not (math.isfinite(fill) and low <= fill <= high):
                raise UsageError(f"missing_uncertainty {fill} lies outside uncertainty_range {self.uncertainty_range}")
        if self.loss_normalization not in ("token", "sample"):
            raise UsageError(f"loss_normalization: unknown value {self.loss_normalization!r}; choose token or sample")
        if self.loss_normalization == "sample" and self.packing and self.packing_strategy != "bfd":
            raise UsageError(
                f"loss_normalization 'sample' with packing_strategy {self.packing_strategy!r}: that strategy splits a "
                "sample across sequences, so its tokens could not be averaged as one sample. Use packing_strategy "
                "bfd (it truncates instead) or packing: false"
            )
        if self.loss_chunk_size is not None and self.loss_chunk_size < 1:
            raise UsageError(f"loss_chunk_size must be a positive number of tokens, got {self.loss_chunk_size}")

    @property
    def missing_fill(self) -> float | None:
        """The score given to a sample without one, or None when a missing score is an error."""
        return None if self.missing_uncertainty == "error" else float(self.missing_uncertainty)

    def smoothing_settings(self) -> dict:
        """The smoothing fields, as saved next to the model."""
        return {name: getattr(self, name) for name in SMOOTHING_FIELDS}
