"""Streamed datasets (``IterableDataset``) for training and evaluation, with every strategy.

``uncertainty`` takes the mean score from one pass over the score column before training, so its mapping must be
exactly the map-style one; the other strategies read each row's score as it streams past."""

import pytest
import torch
from datasets import Dataset

from conftest import cpu_config
from test_trainer import raw_rows, trl_dataset
from ual.data import TOKEN_SMOOTHING
from ual.errors import UsageError
from ual.trainer import UALTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("strategy", ["uncertainty", "linear", "constant", "none", "explicit"])
def test_streamed_training_set_trains_with_the_map_style_mapping(tmp_path, tiny_model_path, strategy):
    rows = raw_rows(10)
    args = dict(smoothing_strategy=strategy, smoothing_mean=0.1, max_steps=2, logging_steps=1)
    mapped = UALTrainer(model=tiny_model_path, args=cpu_config(tmp_path / "m", **args),
                        train_dataset=trl_dataset(rows))
    streamed = UALTrainer(model=tiny_model_path, args=cpu_config(tmp_path / "s", **args),
                          train_dataset=trl_dataset(rows).to_iterable_dataset())
    assert streamed.smoothing_map == mapped.smoothing_map
    # every eps in a streamed batch is the mapping of one of the samples' scores
    column = "smoothing" if strategy == "explicit" else "uncertainty"
    want = {round(float(v), 5) for v in mapped.smoothing_map([r[column] for r in rows])}
    batch = next(iter(streamed.get_train_dataloader()))
    got = {round(float(v), 5) for v in batch[TOKEN_SMOOTHING][batch["labels"] != -100]}
    assert got and got <= want, (got, want)
    streamed.train()
    assert len([h for h in streamed.state.log_history if "loss" in h]) == 2


def test_streamed_eval_set_uses_the_training_mapping(tmp_path, tiny_model_path):
    rows = raw_rows(12)
    trainer = UALTrainer(model=tiny_model_path, args=cpu_config(tmp_path, max_steps=1, per_device_eval_batch_size=2),
                         train_dataset=trl_dataset(rows[:8]), eval_dataset=trl_dataset(rows[8:]).to_iterable_dataset())
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and torch.isfinite(torch.tensor(metrics["eval_loss"]))


def test_a_bad_score_in_a_stream_names_its_row(tmp_path, tiny_model_path):
    rows = [{**r, "uncertainty": 150.0 if i == 3 else r["uncertainty"]} for i, r in enumerate(raw_rows(8))]
    stream = Dataset.from_list([{**r} for r in trl_dataset(rows)]).to_iterable_dataset()
    with pytest.raises(UsageError, match=r"row 3 \(0-based\), column 'uncertainty': 150.0 lies outside"):
        UALTrainer(model=tiny_model_path, args=cpu_config(tmp_path, max_steps=1), train_dataset=stream)
    linear = UALTrainer(model=tiny_model_path, args=cpu_config(tmp_path / "l", max_steps=4, per_device_train_batch_size=2,
                                                                 smoothing_strategy="linear"), train_dataset=stream)
    with pytest.raises(UsageError, match=r"row 3 \(0-based\)"):  # read as it streams past: stops at that row
        linear.train()


def test_a_packed_stream_gives_the_packed_map_style_rows(tmp_path, tiny_model_path):
    """BFD packs each block of up to 1000 rows as it streams (datasets' batched map): with fewer rows than that and
    no shuffling, the streamed packs, and the eps riding on every token, are the map-style packs."""
    rows = raw_rows(12)
    args = dict(packing=True, max_length=64, shuffle_dataset=False, smoothing_strategy="uncertainty",
                per_device_train_batch_size=2, max_steps=2, logging_steps=1)
    packs = {}
    for name, data in (("mapped", trl_dataset(rows)), ("streamed", trl_dataset(rows).to_iterable_dataset())):
        trainer = UALTrainer(model=tiny_model_path, args=cpu_config(tmp_path / name, **args), train_dataset=data)
        # eps as the collator makes it, float32 (Arrow stores the map-style column as float32, a stream keeps floats)
        packs[name] = [{**{k: row[k] for k in ("input_ids", "labels", "seq_lengths")},
                        TOKEN_SMOOTHING: torch.tensor(row[TOKEN_SMOOTHING], dtype=torch.float32).tolist()}
                       for row in trainer.train_dataset]
    assert len(packs["mapped"]) < len(rows) and packs["streamed"] == packs["mapped"]
    trainer.train()
    assert len([h for h in trainer.state.log_history if "loss" in h]) == 2
