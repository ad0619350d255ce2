"""Bad input fails early and clearly (file, row, column), before any model is loaded; formats convert."""

import json
import logging
import math

import pytest
import yaml

from conftest import SAMPLE_DATA, cpu_config, write_jsonl
from ual.data import UALDatasetConfig, load_mixture
from ual.errors import UsageError
from ual.formats import convert, detect_format, turns
from ual.train import main as train_main

EMPTY_MODEL = "empty-model"  # an empty folder: loading it would fail, so errors must come from the data, earlier


def gsm_rows(n=4, overrides=None):
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}", "uncertainty": 10.0 + i}
            for i in range(n)]
    for (i, key), value in (overrides or {}).items():
        if value is _DROP:
            rows[i].pop(key)
        else:
            rows[i][key] = value
    return rows


_DROP = object()


def recipe(tmp_path, data_files, **extra) -> str:
    (tmp_path / EMPTY_MODEL).mkdir(exist_ok=True)
    body = {
        "model_name_or_path": str(tmp_path / EMPTY_MODEL),
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "bf16": False,
        "report_to": "none",
        "datasets": [{"path": str(f), "format": "gsm8k"} for f in data_files],
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({(2, "uncertainty"): _DROP}, r"row 2 \(0-based\), column 'uncertainty': missing value"),
        ({(1, "uncertainty"): None}, r"row 1 \(0-based\), column 'uncertainty': missing value"),
        ({(3, "uncertainty"): -4.0}, r"row 3 \(0-based\), column 'uncertainty': -4.0 is negative"),
        ({(0, "uncertainty"): 150.0}, r"row 0 \(0-based\), column 'uncertainty': 150.0 lies outside the declared range \[0, 99\]"),
        ({(2, "uncertainty"): float("inf")}, r"row 2 \(0-based\), column 'uncertainty': inf is not finite"),
        ({(1, "uncertainty"): float("nan")}, r"row 1 \(0-based\), column 'uncertainty': nan is not finite"),
        ({(1, "uncertainty"): "high"}, r"row 1 \(0-based\), column 'uncertainty': 'high' is not a number"),
    ],
)
def test_bad_scores_name_file_row_and_column_before_the_model_loads(tmp_path, overrides, message):
    data = write_jsonl(tmp_path / "scores.jsonl", gsm_rows(overrides=overrides))
    with pytest.raises(ValueError, match=message) as info:
        train_main([recipe(tmp_path, [data])])
    assert str(data) in str(info.value)


def test_several_bad_rows_are_all_listed(tmp_path):
    data = write_jsonl(tmp_path / "s.jsonl", gsm_rows(6, {(1, "uncertainty"): -1.0, (4, "uncertainty"): -2.0}))
    with pytest.raises(ValueError, match=r"row 1 .*2 bad rows in all: 1, 4"):
        train_main([recipe(tmp_path, [data])])


def test_missing_column_names_it_and_the_file(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "uncertainty"} for r in gsm_rows()]
    data = write_jsonl(tmp_path / "noscore.jsonl", rows)
    with pytest.raises(ValueError, match=r"noscore.jsonl.*no column 'uncertainty'.*ual score"):
        train_main([recipe(tmp_path, [data])])


def test_fill_policy_gives_missing_scores_the_declared_value(tmp_path):
    data = write_jsonl(tmp_path / "s.jsonl", gsm_rows(overrides={(2, "uncertainty"): None}))
    args = cpu_config(tmp_path, missing_uncertainty="50")
    mixed = load_mixture([UALDatasetConfig(path=str(data), format="gsm8k")], args)
    from ual.data import attach_smoothing

    _, fitted, _ = attach_smoothing(mixed, args, "train")
    scores = [10.0, 11.0, 50.0, 13.0]
    assert fitted.to_dict()["strategy"] == "uncertainty"
    assert fitted([50.0])[0] == pytest.approx(0.1 * 50 / (sum(scores) / 4))


def test_missing_fill_value_must_be_a_score_in_range(tmp_path):
    with pytest.raises(ValueError, match="missing_uncertainty must be 'error' or a number"):
        cpu_config(tmp_path, missing_uncertainty="fifty")
    with pytest.raises(ValueError, match="outside uncertainty_range"):
        cpu_config(tmp_path, missing_uncertainty="120")


def test_all_zero_scores_and_unreachable_target_fail_before_the_model(tmp_path):
    zeros = write_jsonl(tmp_path / "zero.jsonl", [{**r, "uncertainty": 0.0} for r in gsm_rows()])
    with pytest.raises(ValueError, match="every uncertainty score is 0"):
        train_main([recipe(tmp_path, [zeros])])
    data = write_jsonl(tmp_path / "ok.jsonl", gsm_rows())
    with pytest.raises(ValueError, match="unreachable"):
        train_main([recipe(tmp_path, [data], smoothing_mean=0.995)])


def test_sft_and_constant_baselines_need_no_scores(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "uncertainty"} for r in gsm_rows()]
    data = write_jsonl(tmp_path / "noscore.jsonl", rows)
    for strategy in ("none", "constant"):
        mixed = load_mixture([UALDatasetConfig(path=str(data), format="gsm8k")], cpu_config(tmp_path, smoothing_strategy=strategy))
        assert len(mixed) == 4


def test_unknown_recipe_key_is_named(tmp_path):
    data = write_jsonl(tmp_path / "ok.jsonl", gsm_rows())
    with pytest.raises(ValueError, match="smoothing_meen"):
        train_main([recipe(tmp_path, [data], smoothing_meen=0.1)])


def test_unknown_dataset_entry_key_is_named(tmp_path):
    data = write_jsonl(tmp_path / "ok.jsonl", gsm_rows())
    path = recipe(tmp_path, [data])
    body = yaml.safe_load(open(path))
    body["datasets"][0]["fromat"] = "gsm8k"
    open(path, "w").write(yaml.safe_dump(body))
    with pytest.raises(ValueError, match=r"datasets\[0\]: unknown key\(s\) \['fromat'\]"):
        train_main([path])


def test_misspelt_strategy_lists_the_choices(tmp_path):
    data = write_jsonl(tmp_path / "ok.jsonl", gsm_rows())
    with pytest.raises(ValueError, match="smoothing_strategy: unknown value 'uncertainity'.*uncertainty, linear"):
        train_main([recipe(tmp_path, [data], smoothing_strategy="uncertainity")])


def test_cli_misspelt_strategy_is_refused_by_argparse_in_one_line(tmp_path, capsys):
    from ual.train import cli

    data = write_jsonl(tmp_path / "ok.jsonl", gsm_rows())
    assert cli([recipe(tmp_path, [data]), "--smoothing_strategy", "uniformm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ual train: error: argument --smoothing_strategy")
    assert "invalid choice: 'uniformm'" in err[0] and "'uncertainty', 'linear'" in err[0]


def test_missing_dataset_path(tmp_path):
    with pytest.raises(UsageError, match=r"datasets\[0\] .*does not exist"):
        train_main([recipe(tmp_path, [tmp_path / "nope.jsonl"])])


def test_format_must_match_columns(tmp_path):
    data = write_jsonl(tmp_path / "ok.jsonl", gsm_rows())
    with pytest.raises(ValueError, match=r"format 'alpaca' needs column\(s\) \['instruction', 'output'\]"):
        load_mixture([UALDatasetConfig(path=str(data), format="alpaca")], cpu_config(tmp_path))


def test_mixture_of_different_shapes_needs_assistant_only_loss(tmp_path):
    gsm = write_jsonl(tmp_path / "g.jsonl", gsm_rows())
    chat = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "uncertainty": 80.0}])
    entries = [UALDatasetConfig(path=str(gsm)), UALDatasetConfig(path=str(chat))]
    with pytest.raises(ValueError, match="share one shape.*assistant_only_loss: true"):
        load_mixture(entries, cpu_config(tmp_path))
    mixed = load_mixture(entries, cpu_config(tmp_path, assistant_only_loss=True))
    assert mixed.column_names[0] == "messages" or "messages" in mixed.column_names
    assert [m["role"] for m in mixed[0]["messages"]] == ["user", "assistant"] and len(mixed) == 5


def test_cli_flags_override_the_recipe(tmp_path):
    from ual.train import parse_args

    data = write_jsonl(tmp_path / "ok.jsonl", gsm_rows())
    args, model_args, data_args = parse_args([recipe(tmp_path, [data], smoothing_mean=0.2), "--smoothing_mean", "0.3"])
    assert args.smoothing_mean == 0.3 and model_args.model_name_or_path.endswith(EMPTY_MODEL)
    assert data_args.datasets[0].format == "gsm8k"


def test_fully_masked_samples_are_dropped_and_counted(tmp_path, tiny_model_path, caplog):
    from datasets import Dataset

    from ual.trainer import UALTrainer

    long_prompt = "word " * 200
    rows = [convert({"question": long_prompt if i < 2 else f"q{i}", "answer": f"a{i}"}, "gsm8k") for i in range(5)]
    ds = Dataset.from_list([{**r, "uncertainty": 20.0 + i} for i, r in enumerate(rows)])
    with caplog.at_level(logging.WARNING, logger="ual"):
        trainer = UALTrainer(model=tiny_model_path, args=cpu_config(tmp_path, max_length=32), train_dataset=ds)
    assert trainer.dropped_samples["train"] == 2 and len(trainer.train_dataset) == 3
    assert "dropped 2 of 5 samples" in caplog.text


def test_fraction_mixing_follows_trl(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", gsm_rows(10))
    b = write_jsonl(tmp_path / "b.jsonl", gsm_rows(4))
    mixed = load_mixture(
        [UALDatasetConfig(path=str(a), fraction=0.5, source="a"), UALDatasetConfig(path=str(b), fraction=0.5, source="b")],
        cpu_config(tmp_path),
    )
    assert mixed["source"].count("a") == 4 and mixed["source"].count("b") == 4


def test_shipped_sample_data_is_scored_by_the_prior():
    for name in ("gsm8k_train_200.jsonl", "alpaca_200.jsonl"):
        rows = [json.loads(line) for line in (SAMPLE_DATA / name).read_text().splitlines()]
        assert len(rows) == 200
        assert {r["uncertainty_method"] for r in rows} == {"prior-v1"}
        assert all(0 <= r["uncertainty"] <= 99 and math.isfinite(r["uncertainty"]) for r in rows)


def test_converters():
    alpaca = convert({"instruction": "Translate", "input": "bonjour", "output": "hello"}, "alpaca")
    assert alpaca["prompt"] == [{"role": "user", "content": "Translate\n\nbonjour"}]
    assert alpaca["completion"] == [{"role": "assistant", "content": "hello"}]
    share = convert({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "conversations")
    assert share["messages"][1] == {"role": "assistant", "content": "yo"}
    assert detect_format(["question", "answer", "uncertainty"]) == "gsm8k"
    assert detect_format(["prompt", "completion"]) == "prompt_completion"
    assert [t["role"] for t in turns({"instruction": "a", "input": "", "output": "b"}, "auto")] == ["user", "assistant"]


@pytest.mark.parametrize(
    "extra, error, message",
    [
        ({"model_name_or_path": "mistralai/Mistral-7B-v0.1"}, UsageError, "no such folder.*as a hub model id it is not in the local cache while HF_HUB_OFFLINE is set.*hf download"),
        ({"use_peft": True, "lora_target_modules": ["q_proj", "lm_head"]}, ValueError, "lora_target_modules includes 'lm_head'"),
    ],
)
def test_model_mistakes_fail_before_loading(tmp_path, extra, error, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = write_jsonl(tmp_path / "ok.jsonl", gsm_rows())
    with pytest.raises(error, match=message):
        train_main([recipe(tmp_path, [data], **extra)])


def test_qlora_without_bitsandbytes_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    data = write_jsonl(tmp_path / "ok.jsonl", gsm_rows())
    with pytest.raises(UsageError, match="needs bitsandbytes"):
        train_main([recipe(tmp_path, [data], use_peft=True, load_in_4bit=True)])
