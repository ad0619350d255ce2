"""smoothing_prior: unigram -- the counts, the loss against a float64 reference, the saved record and resume."""

import json

import pytest
import torch
from datasets import IterableDataset

from conftest import cpu_config
from test_loss import reference
from test_trainer import layout_config, make_trainer, raw_rows, trl_dataset
from ual.data import TOKEN_SMOOTHING
from ual.errors import UsageError
from ual.trainer import SETTINGS_FILE, UALTrainer


def test_counts_are_the_trained_label_tokens_of_the_prepared_set(tmp_path, tiny_model_path):
    """Two independent counts: the labels TRL built for every prepared row (position 0 is never a label after the
    shift), and the labels of one whole epoch of the trainer's own (shuffled, batched) dataloader."""
    trainer = make_trainer(tmp_path, tiny_model_path, raw_rows(10), smoothing_prior="unigram",
                           per_device_train_batch_size=3)
    vocab = trainer.model.config.vocab_size
    by_rows = torch.zeros(vocab, dtype=torch.int64)
    for row in trainer.train_dataset:
        labels = torch.tensor(row["labels"][1:])
        assert (labels == -100).any(), "the prompt is masked (completion-only loss), so the count can miss it"
        by_rows += torch.bincount(labels[labels != -100], minlength=vocab)
    by_epoch = torch.zeros(vocab, dtype=torch.int64)
    for batch in trainer.get_train_dataloader():
        labels = batch["labels"][:, 1:]
        by_epoch += torch.bincount(labels[labels != -100], minlength=vocab)
    assert torch.equal(trainer.unigram_counts, by_rows) and torch.equal(by_rows, by_epoch)
    prior = trainer.unigram_prior
    n = int(by_rows.sum())
    assert float(prior.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(prior.min()) == pytest.approx(1 / (n + vocab), rel=1e-12)  # an unseen token keeps its add-one share
    assert float(prior.max()) == pytest.approx((int(by_rows.max()) + 1) / (n + vocab), rel=1e-12)


@pytest.mark.parametrize("layout", ["padded", "packed, padding-free"])
def test_loss_and_gradients_match_a_float64_reference_with_the_prior(tmp_path, tiny_model_path, layout):
    rows = raw_rows(6)
    cfg = layout_config(layout, batch_size=6)
    trainer = make_trainer(tmp_path, tiny_model_path, rows, smoothing_prior="unigram", **cfg)
    model = trainer.model.double().train()
    batch = next(iter(trainer.get_train_dataloader()))
    params = [p for p in model.parameters() if p.requires_grad]
    loss = trainer.compute_loss(model, dict(batch))
    grads = torch.autograd.grad(loss, params)

    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    hidden = model.model(**inputs).last_hidden_state[:, :-1]
    labels, eps = batch["labels"][:, 1:], batch[TOKEN_SMOOTHING][:, 1:].double()
    mask = labels != -100
    prior = trainer.unigram_prior
    want = reference(hidden[mask], model.lm_head.weight, labels[mask], eps[mask], None, prior=prior).mean()
    want_grads = torch.autograd.grad(want, params)
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=0)
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-12 * float(ref.abs().max()))
    uniform = reference(hidden[mask], model.lm_head.weight, labels[mask], eps[mask], "paper").mean().item()
    # a random tiny model's logits are nearly flat, so the prior moves the loss little (about 5e-5), yet 1e4 times
    # more than the 1e-10 agreement above: a head that ignored the prior would fail the comparison
    assert abs(uniform - want.item()) > 1e-6


def test_the_prior_is_saved_and_a_resume_with_other_counts_is_refused(tmp_path, tiny_model_path):
    trainer = make_trainer(tmp_path / "a", tiny_model_path, raw_rows(6), smoothing_prior="unigram")
    trainer.save_model(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / SETTINGS_FILE).read_text())
    record = saved["unigram_prior"]
    assert saved["settings"]["smoothing_prior"] == "unigram"
    counts = torch.zeros(record["vocab"], dtype=torch.int64)
    for token, c in record["counts"].items():
        counts[int(token)] = c
    assert torch.equal(counts, trainer.unigram_counts) and record["tokens"] == int(counts.sum())

    trainer._check_resume(str(tmp_path / "saved"))  # the same data: accepted
    other = make_trainer(tmp_path / "b", tiny_model_path, raw_rows(6, seed=1), smoothing_prior="unigram")
    with pytest.raises(UsageError, match="unigram smoothing prior"):
        other._check_resume(str(tmp_path / "saved"))
    uniform = make_trainer(tmp_path / "c", tiny_model_path, raw_rows(6))
    with pytest.raises(UsageError, match="settings.smoothing_prior: checkpoint 'unigram', now 'uniform'"):
        uniform._check_resume(str(tmp_path / "saved"))
    assert uniform.unigram_prior is None


def test_a_streamed_training_set_is_refused_before_the_model_loads(tmp_path):
    rows = trl_dataset(raw_rows(4))
    stream = IterableDataset.from_generator(lambda: iter(rows))
    with pytest.raises(UsageError, match="streamed.*cannot be counted"):
        UALTrainer(model="/nonexistent-model", args=cpu_config(tmp_path, smoothing_prior="unigram",
                                                               smoothing_strategy="explicit"), train_dataset=stream)
    with pytest.raises(UsageError, match="smoothing_prior: unknown value 'zipf'"):
        cpu_config(tmp_path, smoothing_prior="zipf")
