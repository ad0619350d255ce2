"""The recipe keys TRL users bring: ``dataset_name`` and its splits, ``columns:``, ``dataset_streaming``, an eval set
beside the training mixture; and keys of other tools (``torch_dtype``, the alignment-handbook's ``dataset_mixture`` and ``weight``)
answered with what they are called here and how the meaning differs, before anything loads."""

import pytest
import yaml

from conftest import write_jsonl
from test_bad_input import fails_cleanly, gsm, recipe
from ual.errors import UsageError
from ual.train import load_data, main, preflight

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("extra, message", [
    ({"torch_dtype": "bfloat16"}, "unknown key 'torch_dtype': use 'dtype'"),
    ({"dataset_mixture": {"datasets": [{"id": "x", "weight": 0.5}]}}, "is written here as `datasets:`"),
    ({"dataset_streaming": True}, "dataset_streaming: true needs max_steps"),
    ({"dataset_streaming": True, "max_steps": 2, "test_split_size": 0.2}, "test_split_size splits a loaded dataset"),
    ({"test_split_size": 0.2, "eval_datasets": [{"path": "x.jsonl"}]}, "keep one"),
    ({"dataset_test_split": "test"}, "names a split of dataset_name"),
])
def test_keys_of_other_tools_say_what_they_mean_here(tmp_path, capsys, extra, message):
    data = write_jsonl(tmp_path / "g.jsonl", gsm())
    line = fails_cleanly(tmp_path, capsys, [recipe(tmp_path, [{"path": str(data)}], **extra)])
    assert message in line


@pytest.mark.parametrize("flags, message", [
    (["--torch_dtype", "bfloat16"], "the command line: unknown key 'torch_dtype': use 'dtype'"),
    (["--torch_dtype=bfloat16"], "the command line: unknown key 'torch_dtype': use 'dtype'"),
    (["--smoothing_means", "0.1"], "the command line: unknown key 'smoothing_means'; did you mean 'smoothing_mean'"),
])
def test_flags_of_other_tools_get_the_answer_their_recipe_key_gets(tmp_path, capsys, flags, message):
    data = write_jsonl(tmp_path / "g.jsonl", gsm())
    line = fails_cleanly(tmp_path, capsys, [recipe(tmp_path, [{"path": str(data)}]), *flags])
    assert message in line


def test_handbook_weight_is_explained_against_fraction(tmp_path, capsys):
    data = write_jsonl(tmp_path / "g.jsonl", gsm())
    line = fails_cleanly(tmp_path, capsys, [recipe(tmp_path, [{"path": str(data), "weight": 0.5}])])
    assert "datasets[0]: unknown key 'weight'" in line and "`fraction` is its share of the whole mixture" in line


def test_dataset_name_with_train_and_test_splits_trains_and_evaluates(tmp_path, tiny_model_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", gsm(12))
    write_jsonl(folder / "test.jsonl", gsm(4))
    body = {"model_name_or_path": tiny_model_path, "output_dir": str(tmp_path / "out"), "use_cpu": True,
            "bf16": False, "report_to": "none", "dataset_name": str(folder), "dataset_test_split": "test",
            "max_steps": 2, "eval_strategy": "steps", "eval_steps": 2, "per_device_eval_batch_size": 2,
            "smoothing_strategy": "uncertainty", "save_strategy": "no"}
    path = tmp_path / "trl.yaml"
    path.write_text(yaml.safe_dump(body))
    run = preflight([str(path)])
    train, evaluation = load_data(run)
    assert (len(train), len(evaluation)) == (12, 4)
    trainer = main([str(path)])
    assert any("eval_loss" in h for h in trainer.state.log_history)


def test_columns_keep_only_what_is_named(tmp_path, capsys):
    rows = [{**r, "noise": {"nested": [1, 2]}} for r in gsm()]
    data = write_jsonl(tmp_path / "g.jsonl", rows)
    path = recipe(tmp_path, [{"path": str(data), "format": "gsm8k",
                              "columns": ["question", "answer", "uncertainty"]}])
    train, _ = load_data(preflight([str(path)]))
    assert "noise" not in train.column_names and len(train) == 12
    bad = recipe(tmp_path, [{"path": str(data), "columns": ["question", "solution"]}])
    line = fails_cleanly(tmp_path, capsys, [bad])
    assert "columns: 'solution' is not a column of the dataset" in line


@pytest.mark.parametrize("extra, message", [
    ({"use_liger_kernel": True}, "use_liger_kernel needs the liger-kernel package"),
    ({"attn_implementation": "flash_attention_2"}, "needs the flash_attn package"),
    ({"attn_implementation": "kernels-community/flash-attn3"}, "is a hub kernel: it needs the kernels package"),
    ({"model_init_kwargs": {"use_kernels": True}}, "use_kernels: true needs the kernels package"),
])
def test_speed_options_without_their_package_fail_before_anything_loads(tmp_path, capsys, extra, message):
    import importlib.util

    missing = {"use_liger_kernel": "liger_kernel", "attn_implementation": "flash_attn"}
    package = "kernels" if "kernels" in str(extra) else missing[next(iter(extra))]
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here, so the refusal cannot be seen")
    data = write_jsonl(tmp_path / "g.jsonl", gsm())
    assert message in fails_cleanly(tmp_path, capsys, [recipe(tmp_path, [{"path": str(data)}], **extra)])


def test_streamed_recipe_fits_the_loaded_mapping_and_trains(tmp_path, tiny_model_path):
    """dataset_streaming: the one pass over the scores gives the mapping a loaded run fits, and training runs."""
    data = write_jsonl(tmp_path / "g.jsonl", gsm(12))
    evaluation = write_jsonl(tmp_path / "e.jsonl", gsm(4))
    body = {"model_name_or_path": tiny_model_path, "use_cpu": True, "bf16": False, "report_to": "none",
            "datasets": [{"path": str(data), "format": "gsm8k"}], "eval_datasets": [{"path": str(evaluation)}],
            "max_steps": 2, "per_device_train_batch_size": 4, "eval_strategy": "steps", "eval_steps": 2,
            "per_device_eval_batch_size": 2, "save_strategy": "no", "smoothing_strategy": "uncertainty"}
    trainers = {}
    for streaming in (False, True):
        path = tmp_path / f"r{streaming}.yaml"
        path.write_text(yaml.safe_dump({**body, "dataset_streaming": streaming,
                                        "output_dir": str(tmp_path / f"out{streaming}")}))
        trainers[streaming] = main([str(path)])
    assert trainers[True].smoothing_map == trainers[False].smoothing_map
    assert type(trainers[True].train_dataset).__name__ == "IterableDataset"
    assert any("eval_loss" in h for h in trainers[True].state.log_history)


@pytest.mark.parametrize("bad, where", [
    ({"answer": None}, "column 'answer': null"),
    ({"uncertainty": 150.0}, "column 'uncertainty': 150.0 lies outside"),
])
def test_a_bad_row_in_a_streamed_recipe_names_its_file_and_row(tmp_path, capsys, bad, where):
    rows = gsm(12)
    rows[7].update(bad)
    data = write_jsonl(tmp_path / "g.jsonl", rows)
    path = recipe(tmp_path, [{"path": str(data), "format": "gsm8k"}], dataset_streaming=True, max_steps=2)
    run = preflight([str(path)])
    train, _ = load_data(run)  # a stream is checked as it is read: only the first row so far
    with pytest.raises(UsageError, match=rf"datasets\[0\] \({data}\): row 7 \(0-based\), {where}"):
        list(train)


def test_streamed_mixture_refuses_fraction(tmp_path, capsys):
    data = write_jsonl(tmp_path / "g.jsonl", gsm())
    path = recipe(tmp_path, [{"path": str(data), "fraction": 0.5}, {"path": str(data), "fraction": 0.5}],
                  dataset_streaming=True, max_steps=2)
    assert "`fraction` needs each dataset's size" in fails_cleanly(tmp_path, capsys, [path])
