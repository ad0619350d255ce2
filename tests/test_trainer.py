"""UALTrainer against TRL's SFTTrainer: same loss at eps = 0, eps aligned per token, GA invariance."""

import json

import pytest
import torch
import torch._dynamo.utils
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from conftest import cpu_config
from ual.data import TOKEN_SMOOTHING
from ual.formats import convert
from ual.trainer import SETTINGS_FILE, UALTrainer

WORDS = "apple river stone cloud music green seven table window garden light number answer story".split()


def raw_rows(n=12, seed=0):
    """Alpaca-style rows of uneven length, each with its own distinct explicit eps and a score."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        k = int(torch.randint(2, 30, (1,), generator=g))
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (k,), generator=g)]
        rows.append(
            {
                "instruction": f"Item {i}: repeat these words",
                "input": "",
                "output": " ".join(words) + f" done {i}",
                "smoothing": round(0.01 + 0.07 * i, 4),  # distinct per sample
                "uncertainty": float(5 + 7 * i),
            }
        )
    return rows


def trl_dataset(rows, columns=("smoothing", "uncertainty")):
    return Dataset.from_list([{**convert(r, "alpaca"), **{c: r[c] for c in columns}} for r in rows])


def make_trainer(tmp_path, model_path, rows, **cfg):
    cfg.setdefault("smoothing_strategy", "explicit")
    return UALTrainer(model=model_path, args=cpu_config(tmp_path, **cfg), train_dataset=trl_dataset(rows))


def expected_sequences(tokenizer, rows, max_length):
    """Independently tokenized (prompt+completion, truncated) sequences -> that sample's eps."""
    table = {}
    for r in rows:
        ex = convert(r, "alpaca")
        ids = tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True, return_dict=True)["input_ids"]
        table[tuple(ids[:max_length])] = r["smoothing"]
    assert len(table) == len(rows)
    return table


def segments(batch):
    """(input_ids, smoothing, labels) per sample in a collated batch, padded or padding-free."""
    if "attention_mask" in batch:
        for ids, eps, labels, mask in zip(batch["input_ids"], batch[TOKEN_SMOOTHING], batch["labels"], batch["attention_mask"]):
            n = int(mask.sum())
            assert torch.all(eps[n:] == 0), "padding must carry eps = 0"
            yield ids[:n], eps[:n], labels[:n]
    else:
        pos = batch["position_ids"][0]
        starts = (pos == 0).nonzero().flatten().tolist() + [pos.numel()]
        for s, e in zip(starts[:-1], starts[1:]):
            yield batch["input_ids"][0, s:e], batch[TOKEN_SMOOTHING][0, s:e], batch["labels"][0, s:e]


@pytest.mark.parametrize(
    "mode, cfg",
    [
        ("padded", dict(max_length=512)),
        ("truncated", dict(max_length=24)),
        ("bfd packed, padding-free", dict(max_length=48, packing=True, packing_strategy="bfd")),
    ],
)
def test_every_trained_token_carries_its_own_samples_eps(tmp_path, tiny_model_path, tokenizer, mode, cfg):
    rows = raw_rows(12)
    trainer = make_trainer(tmp_path, tiny_model_path, rows, per_device_train_batch_size=4, **cfg)
    assert trainer.data_collator.padding_free == cfg.get("packing", False)
    table = expected_sequences(tokenizer, rows, cfg["max_length"])
    seen = set()
    for batch in trainer.get_train_dataloader():
        assert batch[TOKEN_SMOOTHING].shape == batch["input_ids"].shape
        assert batch[TOKEN_SMOOTHING].dtype == torch.float32
        for ids, eps, labels in segments(batch):
            key = tuple(ids.tolist())
            assert key in table, f"{mode}: a collated sequence matches no sample (misaligned or mangled)"
            trained = labels != -100
            assert trained.any()
            torch.testing.assert_close(eps[trained], torch.full_like(eps[trained], table[key]))
            seen.add(key)
    assert seen == set(table), "every sample must reach the batches"


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def loss_and_grads(ual, sft, batch, **compute):
    """([UAL loss, SFT loss], [UAL grads, SFT grads]): one compute_loss + backward of each trainer on the same
    collated batch (SFTTrainer's without the eps column)."""
    losses, grads = [], []
    for trainer, inputs in ((ual, dict(batch)), (sft, {k: v for k, v in batch.items() if k != TOKEN_SMOOTHING})):
        trainer.model.train()
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, inputs, **compute)
        loss.backward()
        losses.append(loss.detach())
        grads.append(_grads(trainer.model))
    return losses, grads


def assert_matches_sft(losses, grads):
    """UAL at eps = 0 against SFTTrainer: the loss to 1e-6 and every gradient tensor to 1e-5 of its scale, the
    tolerances of the error analysis in test_zero_smoothing_equals_sft_trainer_default_loss_and_gradients."""
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=0.0)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        scale = grads[1][name].abs().max().item()
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=0.0, atol=1e-5 * max(scale, 1e-30), msg=name)


def paper_loss_from_logits(logits, labels, eps):
    """Float64 per-token soft-target CE (the paper convention) of the trained positions, from a model's own logits
    [B, T-1, V] (logits[:, t] predicts labels[:, t + 1])."""
    mask = labels[:, 1:] != -100
    logp = logits.double().log_softmax(-1)[mask]
    gold = logp.gather(1, labels[:, 1:][mask][:, None])[:, 0]
    return -(1 - eps) * gold - eps / (logp.shape[1] - 1) * (logp.sum(1) - gold)


@pytest.mark.parametrize("num_items", [None, 37])
def test_zero_smoothing_equals_sft_trainer_default_loss_and_gradients(tmp_path, tiny_model_path, num_items):
    rows = raw_rows(6)
    ual = make_trainer(tmp_path, tiny_model_path, rows, smoothing_strategy="none", per_device_train_batch_size=6)
    sft_args = SFTConfig(
        output_dir=str(tmp_path / "sft"), use_cpu=True, bf16=False, activation_checkpointing=False, report_to="none",
        per_device_train_batch_size=6, max_length=64, seed=0, save_strategy="no",
    )
    sft = SFTTrainer(model=tiny_model_path, args=sft_args, train_dataset=trl_dataset(rows, columns=()))
    batch = next(iter(ual.get_train_dataloader()))
    assert torch.all(batch[TOKEN_SMOOTHING] == 0)

    losses, grads = loss_and_grads(ual, sft, batch, num_items_in_batch=num_items)
    # Tolerances, from an error analysis of the two float32 computations (TRL's fused head works in float32 even
    # for a float64 model, measured, so comparing in float64 would not help): each gradient entry is a sum of up to
    # K ~ V = 1000 rounded terms, summed in different orders by the two heads; with unit roundoff u = 2^-24 ~ 6e-8 the
    # two results differ by about 2 * sqrt(K) * u ~ 4e-6 of the tensor's scale (max |g|). We allow 1e-5 of that scale
    # (measured: at most 4.7e-7 of it); a real difference (one token missed, another normalisation) is 1e-2 or more.
    # A fixed absolute tolerance (1e-7) failed on other machines at 3.9e-7 of the scale: noise, not a bug.
    for name, g in grads[1].items():
        assert g.abs().max() > 0, name
    assert_matches_sft(losses, grads)
    # and the metrics SFTTrainer logs are there, plus the smoothing mean
    for key in ("entropy", "mean_token_accuracy", "num_tokens", "smoothing/mean"):
        assert ual._metrics["train"][key], key
    assert ual._metrics["train"]["entropy"][-1] == pytest.approx(sft._metrics["train"]["entropy"][-1], rel=1e-5)


def test_smoothing_changes_the_loss_by_the_expected_amount(tmp_path, tiny_model_path):
    """With eps > 0 the trainer's loss equals the full-logits soft-target cross-entropy of the same batch."""
    rows = raw_rows(5)
    trainer = make_trainer(tmp_path, tiny_model_path, rows, per_device_train_batch_size=5)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = AutoModelForCausalLM.from_pretrained(tiny_model_path)(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits[:, :-1].double()
    labels, eps = batch["labels"][:, 1:], batch[TOKEN_SMOOTHING][:, 1:].double()
    mask = labels != -100
    logp = logits.log_softmax(-1)[mask]
    y, e = labels[mask], eps[mask]
    vocab = logits.shape[-1]
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    off = -(logp.sum(-1) + nll) / (vocab - 1)  # mean -log p over the V-1 non-gold tokens (log p_y = -nll)
    want = ((1 - e) * nll + e * off).sum() / mask.sum()
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert trainer._metrics["train"]["smoothing/mean"][-1] == pytest.approx(float(e.mean()), rel=1e-5)


@pytest.mark.slow
def test_compiled_loss_head_trains_like_the_eager_one(tmp_path, tiny_model_path):
    """loss_compile=True (torch.compile of the head's elementwise work) gives the eager step's loss and gradients."""
    rows = raw_rows(5)
    losses, grads = [], []
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]
    compiled_before = graphs["unique_graphs"]
    for compiled in (False, True):
        trainer = make_trainer(tmp_path / str(compiled), tiny_model_path, rows, per_device_train_batch_size=5,
                               loss_compile=compiled)
        batch = next(iter(trainer.get_train_dataloader()))
        model = trainer.model.train()
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        losses.append(loss.detach())
        grads.append(_grads(model))
        assert (graphs["unique_graphs"] > compiled_before) == compiled  # the flag reaches the head, eager stays eager
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_accumulation_2x1_equals_batch_of_2(tmp_path, tiny_model_path):
    rows = raw_rows(4)
    deltas = []
    for bs, ga in ((2, 1), (1, 2)):
        trainer = make_trainer(
            tmp_path / f"bs{bs}", tiny_model_path, rows, per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga, max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=0,
            lr_scheduler_type="constant", weight_decay=0.0,
        )
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train()
        deltas.append({n: p.detach() - before[n] for n, p in trainer.model.named_parameters()})
    moved = sum(float(d.abs().sum()) for d in deltas[0].values())
    assert moved > 0
    for name in deltas[0]:
        torch.testing.assert_close(deltas[0][name], deltas[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_eval_set_uses_the_mapping_fitted_on_train(tmp_path, tiny_model_path):
    rows = raw_rows(8)
    trainer = UALTrainer(
        model=tiny_model_path,
        args=cpu_config(tmp_path, smoothing_strategy="uncertainty", smoothing_mean=0.2, eval_strategy="no"),
        train_dataset=trl_dataset(rows[:6]),
        eval_dataset=trl_dataset(rows[6:]),
    )
    scores = torch.tensor([r["uncertainty"] for r in rows[:6]], dtype=torch.float64)
    expected_eval = [0.2 * r["uncertainty"] / float(scores.mean()) for r in rows[6:]]
    got = sorted({round(float(x[0]), 5) for x in trainer.eval_dataset[TOKEN_SMOOTHING]})
    assert got == pytest.approx(sorted(expected_eval), abs=1e-5)
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and "eval_smoothing/mean" in metrics


def test_saved_model_carries_smoothing_settings(tmp_path, tiny_model_path):
    trainer = make_trainer(tmp_path, tiny_model_path, raw_rows(4), smoothing_strategy="uncertainty")
    trainer.save_model(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / SETTINGS_FILE).read_text())
    assert saved["settings"]["smoothing_strategy"] == "uncertainty"
    assert saved["statistics"]["mapping"]["strategy"] == "uncertainty"
    assert (tmp_path / "saved" / "model.safetensors").exists()


def test_lora_trains_and_lm_head_adapter_is_refused(tmp_path, tiny_model_path):
    from peft import LoraConfig

    rows = raw_rows(4)
    trainer = UALTrainer(
        model=tiny_model_path, args=cpu_config(tmp_path, smoothing_strategy="explicit", max_steps=2),
        train_dataset=trl_dataset(rows), peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert lora_before and any(
        not torch.equal(p.detach(), lora_before[n]) for n, p in trainer.model.named_parameters() if n in lora_before
    )
    with pytest.raises(ValueError, match="lm_head"):
        UALTrainer(
            model=tiny_model_path, args=cpu_config(tmp_path, smoothing_strategy="explicit"),
            train_dataset=trl_dataset(rows),
            peft_config=LoraConfig(r=4, target_modules=["q_proj", "lm_head"]),
        )


@pytest.mark.parametrize("shape", ["messages", "prompt_completion_plain", "text"])
def test_other_dataset_shapes_carry_eps_per_sample(tmp_path, tiny_model_path, shape):
    rows = raw_rows(6)
    data = []
    for r in rows:
        if shape == "messages":
            ex = {"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
        elif shape == "prompt_completion_plain":
            ex = {"prompt": r["instruction"] + "\n", "completion": r["output"]}
        else:
            ex = {"text": r["instruction"] + " " + r["output"]}
        data.append({**ex, "smoothing": r["smoothing"]})
    args = cpu_config(tmp_path, smoothing_strategy="explicit", per_device_train_batch_size=3,
                      assistant_only_loss=shape == "messages", max_length=512)
    trainer = UALTrainer(model=tiny_model_path, args=args, train_dataset=Dataset.from_list(data))
    seen = []
    for batch in trainer.get_train_dataloader():
        for ids, eps, labels in segments(batch):
            trained = labels != -100
            assert trained.any() and torch.unique(eps).numel() == 1, "one sample, one eps"
            if shape == "messages":  # assistant-only: the user turn is not trained
                assert not trained[:3].any()
            seen.append(round(float(eps[0]), 4))
    assert sorted(seen) == sorted(r["smoothing"] for r in rows)


# --- loss_normalization: sample ---------------------------------------------------------------------------


def layout_config(layout: str, batch_size: int) -> dict:
    """One batch of every row, padded, or BFD-packed into padding-free rows of 96 tokens."""
    cfg = dict(per_device_train_batch_size=batch_size, max_length=512)
    if layout != "padded":
        cfg.update(packing=True, packing_strategy="bfd", max_length=96)
    return cfg


def _reference_losses(model, batch, convention="paper"):
    """Float64 full-logits soft-target CE of every trained token, with the sample each token belongs to."""
    from test_loss import reference
    from ual.loss import sample_ids

    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    hidden = model.model(**inputs).last_hidden_state[:, :-1]
    labels, eps = batch["labels"][:, 1:], batch[TOKEN_SMOOTHING][:, 1:].double()
    mask = labels != -100
    per_token = reference(hidden[mask], model.lm_head.weight, labels[mask], eps[mask], convention)
    return per_token, sample_ids(batch)[:, 1:][mask]


@pytest.mark.parametrize("layout", ["padded", "packed, padding-free"])
def test_sample_normalisation_matches_a_float64_reference(tmp_path, tiny_model_path, layout):
    """(1/S) * sum over samples of (mean over the sample's trained tokens), in float64 (where UAL's head is exact):
    loss and gradients, against full logits; and it is not the token-weighted mean (the test can fail)."""
    rows = raw_rows(8)
    cfg = layout_config(layout, batch_size=8)
    trainer = make_trainer(tmp_path, tiny_model_path, rows, loss_normalization="sample", **cfg)
    model = trainer.model.double().train()
    batch = next(iter(trainer.get_train_dataloader()))
    assert ("position_ids" in batch and "attention_mask" not in batch) == (layout != "padded")
    params = [p for p in model.parameters() if p.requires_grad]

    loss = trainer.compute_loss(model, dict(batch))
    grads = torch.autograd.grad(loss, params)
    per_token, sample_of = _reference_losses(model, batch)
    samples = sample_of.unique()
    want = torch.stack([per_token[sample_of == s].mean() for s in samples]).mean()
    want_grads = torch.autograd.grad(want, params)

    assert len(samples) == 8 if layout == "padded" else len(samples) >= 8  # bfd may cut a long sample: its own row
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=0)
    for got, ref in zip(grads, want_grads):
        torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-12 * float(ref.abs().max()))
    token_mean = per_token.mean().item()
    assert abs(token_mean - want.item()) > 1e-3 * want.item(), "rows of uneven length: the two means must differ"
    assert trainer._metrics["train"]["smoothing/sample_mean"] and trainer._metrics["train"]["smoothing/mean"]


def test_sample_normalisation_2x1_accumulation_equals_a_batch_of_2_and_differs_from_token(tmp_path, tiny_model_path):
    rows = raw_rows(4)
    deltas = {}
    for name, norm, bs, ga in (("sample 2x1", "sample", 2, 1), ("sample 1x2", "sample", 1, 2), ("token", "token", 2, 1)):
        trainer = make_trainer(
            tmp_path / name.replace(" ", ""), tiny_model_path, rows, per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga, max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=0,
            lr_scheduler_type="constant", weight_decay=0.0, loss_normalization=norm,
        )
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train()
        deltas[name] = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}
    for n in deltas["token"]:
        torch.testing.assert_close(deltas["sample 2x1"][n], deltas["sample 1x2"][n], rtol=1e-4, atol=1e-6, msg=n)
    gap = sum(float((deltas["sample 2x1"][n] - deltas["token"][n]).abs().sum()) for n in deltas["token"])
    assert gap > 1e-3 * sum(float(d.abs().sum()) for d in deltas["token"].values())


def test_sample_normalisation_refuses_packing_that_splits_samples(tmp_path):
    from ual.errors import UsageError

    for strategy in ("bfd_split", "wrapped"):
        with pytest.raises(UsageError, match=f"packing_strategy '{strategy}': that strategy splits a sample"):
            cpu_config(tmp_path, loss_normalization="sample", packing=True, packing_strategy=strategy)
    cpu_config(tmp_path, loss_normalization="sample", packing=True, packing_strategy="bfd")  # truncates: fine


def test_both_applied_means_are_saved_as_numbers(tmp_path, tiny_model_path, tokenizer):
    rows = raw_rows(6)
    trainer = make_trainer(tmp_path, tiny_model_path, rows, max_length=512)
    trainer.save_model(str(tmp_path / "saved"))
    applied = json.loads((tmp_path / "saved" / SETTINGS_FILE).read_text())["applied"]
    trained = {}
    for r in rows:  # independently: trained tokens = the completion's (after the shift), per sample
        ex = convert(r, "alpaca")
        full = tokenizer.apply_chat_template(ex["prompt"] + ex["completion"], tokenize=True, return_dict=True)
        prompt = tokenizer.apply_chat_template(ex["prompt"], tokenize=True, return_dict=True,
                                               add_generation_prompt=True)
        trained[r["smoothing"]] = len(full["input_ids"]) - len(prompt["input_ids"])
    eps, n = zip(*trained.items())
    assert applied["sample_mean"] == pytest.approx(sum(eps) / len(eps), rel=1e-6)
    assert applied["token_mean"] == pytest.approx(sum(e * k for e, k in zip(eps, n)) / sum(n), rel=1e-6)
    assert applied["samples"] == 6 and applied["tokens"] == sum(n)


def test_training_arguments_become_a_ual_config_as_sft_trainer_converts_them(tmp_path, tiny_model_path):
    from transformers import TrainingArguments

    from ual.config import UALConfig

    plain = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, learning_rate=1.234e-4, max_steps=2,
                              per_device_train_batch_size=2, report_to="none", save_strategy="no")
    trainer = UALTrainer(model=tiny_model_path, args=plain, train_dataset=trl_dataset(raw_rows(4)))
    sft = SFTTrainer(model=tiny_model_path, args=plain, train_dataset=trl_dataset(raw_rows(4), columns=()))
    assert isinstance(trainer.args, UALConfig) and type(sft.args).__name__ == "SFTConfig"
    assert trainer.args.learning_rate == sft.args.learning_rate == 1.234e-4 and trainer.args.max_steps == 2
    assert trainer.args.smoothing_strategy == UALConfig.__dataclass_fields__["smoothing_strategy"].default
    trainer.train()


def test_an_sft_config_keeps_its_token_fields(tmp_path, tiny_model_path, tokenizer):
    """transformers' to_dict masks every *_token field as '<EOS_TOKEN>' ...; the conversion must not copy the mask."""
    from ual.config import UALConfig

    sft_args = SFTConfig(output_dir=str(tmp_path / "o"), use_cpu=True, max_steps=1, report_to="none",
                         eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token, hub_token="hf_secret")
    trainer = UALTrainer(model=tiny_model_path, args=sft_args, train_dataset=trl_dataset(raw_rows(4)))
    assert isinstance(trainer.args, UALConfig)
    assert (trainer.args.eos_token, trainer.args.pad_token, trainer.args.hub_token) == (
        tokenizer.eos_token, tokenizer.pad_token, "hf_secret")
    none_set = UALTrainer(model=tiny_model_path, train_dataset=trl_dataset(raw_rows(4)),
                          args=SFTConfig(output_dir=str(tmp_path / "n"), use_cpu=True, report_to="none"))
    assert none_set.args.eos_token is None and none_set.args.pad_token is None


def test_a_missing_dataset_raises_what_sft_trainer_raises(tmp_path, tiny_model_path):
    with pytest.raises(ValueError) as sft_error:
        SFTTrainer(model=tiny_model_path, args=SFTConfig(output_dir=str(tmp_path / "s"), use_cpu=True))
    with pytest.raises(ValueError) as ual_error:
        UALTrainer(model=tiny_model_path, args=cpu_config(tmp_path))
    assert str(ual_error.value) == str(sft_error.value)


@pytest.mark.parametrize("strategy, eps", [("none", 0.0), ("constant", 0.1)])
def test_skip_prepare_dataset_needs_no_token_column_when_every_sample_has_the_same_eps(tmp_path, tiny_model_path,
                                                                                     tokenizer, strategy, eps):
    rows = []
    for r in raw_rows(4):
        ids = tokenizer(r["instruction"] + " " + r["output"])["input_ids"][:40]
        rows.append({"input_ids": ids, "labels": ids})
    args = cpu_config(tmp_path, smoothing_strategy=strategy, smoothing_mean=0.1, max_steps=1,
                      dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False)
    trainer = UALTrainer(model=tiny_model_path, args=args, train_dataset=Dataset.from_list(rows))
    batch = next(iter(trainer.get_train_dataloader()))
    trained = batch["labels"] != -100
    assert torch.allclose(batch[TOKEN_SMOOTHING][trained].double(), torch.tensor(eps, dtype=torch.float64))
    trainer.train()
    with pytest.raises(ValueError, match="needs a per-token"):
        UALTrainer(model=tiny_model_path, args=cpu_config(tmp_path / "u", dataset_kwargs={"skip_prepare_dataset": True},
                                                          smoothing_strategy="uncertainty"),
                   train_dataset=Dataset.from_list(rows))
