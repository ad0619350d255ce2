"""Every recipe, overlay and launch config ships in a state the pinned libraries accept."""

import itertools
import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from ual.launch import build_command, known_configs
from ual.launch import main as launch_main
from ual.recipe import load_recipe
from ual.errors import UsageError
from ual.train import parse_args

RECIPES = REPO / "recipes"
SCENARIOS = ["high_entropy", "low_entropy", "mixed"]
BASELINES = [None, "baselines/sft.yaml", "baselines/ls.yaml"]
VARIANTS = [None, "variants/qlora.yaml", "variants/full_zero3.yaml", "variants/qwen2.5-7b.yaml"]
CONFIGS = sorted(p.stem for p in (REPO / "accelerate_configs").glob("*.yaml"))


def stack(scenario, baseline, variant):
    return [str(RECIPES / f"{scenario}.yaml")] + [str(RECIPES / p) for p in (baseline, variant) if p]


@pytest.mark.parametrize("scenario, baseline, variant", list(itertools.product(SCENARIOS, BASELINES, VARIANTS)))
def test_every_scenario_method_variant_parses_with_no_unknown_key(scenario, baseline, variant):
    # --use_cpu only because this machine has no GPU (bf16 otherwise refuses to parse)
    args, model_args, data_args = parse_args([*stack(scenario, baseline, variant), "--use_cpu", "true"])
    expected = {None: "uncertainty", "baselines/sft.yaml": "none", "baselines/ls.yaml": "constant"}[baseline]
    assert args.smoothing_strategy == expected
    assert args.smoothing_mean == pytest.approx(0.1) and args.seed == 1337 and args.max_length == 768
    assert data_args.datasets and all(d.path.startswith("data/") for d in data_args.datasets)
    processes = load_recipe(stack(scenario, baseline, variant)).launcher["num_processes"]
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * processes == 64, "effective batch 64"
    if variant == "variants/full_zero3.yaml":
        assert not model_args.use_peft
    else:
        assert model_args.use_peft and model_args.lora_r == 8 and model_args.lora_target_modules == ["q_proj", "v_proj"]
    assert model_args.load_in_4bit == (variant == "variants/qlora.yaml")
    assert args.warmup_steps == pytest.approx(0.03)
    assert Path(args.output_dir).name == "+".join(Path(p).stem for p in stack(scenario, baseline, variant))


def test_tiny_recipe_parses_and_points_at_shipped_files():
    args, model_args, data_args = parse_args([str(RECIPES / "tiny.yaml")])
    assert (REPO / model_args.model_name_or_path / "config.json").exists()
    assert all((REPO / d.path).exists() for d in data_args.datasets)
    assert args.use_cpu and not args.bf16


def test_chat_template_marks_assistant_turns(tokenizer):
    template = (RECIPES / "templates" / "user_assistant.jinja").read_text()
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
    )
    trained = tokenizer.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert trained == "4" + tokenizer.eos_token


@pytest.mark.parametrize("name", CONFIGS)
def test_accelerate_configs_load_with_accelerates_own_classes(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(REPO / "accelerate_configs" / f"{name}.yaml"))
    assert isinstance(config, ClusterConfig) and config.num_processes >= 1
    if config.distributed_type == "DEEPSPEED":
        ds_file = config.deepspeed_config["deepspeed_config_file"]
        # relative to the config file (ual.launch.deepspeed_json), so a copy of both works from any folder
        assert (REPO / "accelerate_configs" / ds_file).exists() and config.mixed_precision in (None, "no")


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero3_offload"])
def test_deepspeed_json_is_accepted_by_deepspeed(name):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args, _, _ = parse_args([str(RECIPES / "mixed.yaml"), "--use_cpu", "true"])
    hf = HfTrainerDeepSpeedConfig(str(REPO / "accelerate_configs" / "deepspeed" / f"{name}.json"))
    raw = json.loads((REPO / "accelerate_configs" / "deepspeed" / f"{name}.json").read_text())
    assert raw["gradient_accumulation_steps"] == "auto", "accumulation comes from the recipe, never the JSON"
    hf.trainer_config_process(args)
    ds = DeepSpeedConfig(dict(hf.config))
    assert ds.zero_optimization_stage == (2 if name == "zero2" else 3)
    assert ds.gradient_accumulation_steps == args.gradient_accumulation_steps


@pytest.mark.parametrize("name", CONFIGS)
def test_dry_run_prints_the_launch_command_for_each_config(tmp_path, name, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    overlay = tmp_path / "launch.yaml"
    overlay.write_text(f"accelerate_config: {name}\nnum_processes: 2\n")
    out = tmp_path / "out"
    assert launch_main(["recipes/tiny.yaml", str(overlay), "--max_steps", "3", "--output_dir", str(out),
                        "--dry-run"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    ds_file = (yaml.safe_load((REPO / "accelerate_configs" / f"{name}.yaml").read_text()).get("deepspeed_config")
               or {}).get("deepspeed_config_file")
    json_flag = f"--deepspeed_config_file accelerate_configs/{ds_file} " if ds_file else ""
    assert printed[0] == (
        f"accelerate launch --config_file accelerate_configs/{name}.yaml {json_flag}--num_processes 2 "
        f"-m ual.train recipes/tiny.yaml {overlay} --max_steps 3 --output_dir {out}"
    )
    assert printed[-1].startswith("dry run: recipe keys, model, output folder and data paths checked")
    assert not out.exists(), "a dry run creates nothing"


def test_launch_flags_go_to_accelerate_not_to_the_ranks(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    cmd, _, processes = build_command(["recipes/tiny.yaml", "--num_processes", "2", "--learning_rate", "1e-4",
                                       "--main_process_port=29611", "--accelerate_config", "cpu_ddp"])
    launch, ranks = cmd[:cmd.index("-m")], cmd[cmd.index("-m"):]
    assert processes == 2 and launch[launch.index("--num_processes") + 1] == "2"
    assert launch[launch.index("--main_process_port") + 1] == "29611"
    assert launch[launch.index("--config_file") + 1] == "accelerate_configs/cpu_ddp.yaml"
    assert ranks == ["-m", "ual.train", "recipes/tiny.yaml", "--learning_rate", "1e-4"]
    args, _, _ = parse_args(ranks[2:])  # what every rank parses: no launcher flag left for TRL's parser to refuse
    assert args.learning_rate == 1e-4
    with pytest.raises(UsageError, match="--num_processes needs a value"):
        build_command(["recipes/tiny.yaml", "--num_processes"])


@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3", "fsdp1", "fsdp2", "multi_gpu", "single_gpu"])
def test_trl_short_config_names_resolve_as_trl_sft_resolves_them(name, monkeypatch):
    from ual.launch import resolve_config, trl_configs

    monkeypatch.chdir(REPO)
    path = resolve_config(name)
    ours = REPO / "accelerate_configs" / f"{name}.yaml"
    assert path == (ours if ours.exists() else trl_configs()[name]) and path.is_file()


def test_dry_run_checks_the_data_paths(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    overlay = tmp_path / "data.yaml"
    overlay.write_text("datasets:\n  - path: data/nowhere.jsonl\n    format: gsm8k\n")
    assert launch_main(["recipes/tiny.yaml", str(overlay), "--output_dir", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "datasets[0] (data/nowhere.jsonl): dataset path 'data/nowhere.jsonl' does not exist" in err[0]


def test_recipe_launch_keys_drive_the_command(monkeypatch):
    monkeypatch.chdir(REPO)
    cmd, config, processes = build_command(["recipes/mixed.yaml", "recipes/variants/qlora.yaml"])
    assert cmd[cmd.index("--config_file") + 1] == "accelerate_configs/single_gpu.yaml" and processes == 1
    assert cmd[-4:] == ["-m", "ual.train", "recipes/mixed.yaml", "recipes/variants/qlora.yaml"]


def test_unknown_config_name_lists_the_known_ones(tmp_path, capsys):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("accelerate_config: zero9\n")
    assert launch_main([str(RECIPES / "tiny.yaml"), str(overlay), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown name 'zero9'" in err and all(name in err for name in known_configs())


def test_more_processes_than_gpus_is_refused_before_launch(tmp_path, capsys):
    import torch

    overlay = tmp_path / "many.yaml"
    overlay.write_text(f"accelerate_config: multi_gpu\nnum_processes: {torch.cuda.device_count() + 1}\n")
    assert launch_main([str(RECIPES / "tiny.yaml"), str(overlay)]) == 2
    assert "GPU(s)" in capsys.readouterr().err


def test_base_chain_and_loops(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nlearning_rate: 1.0\n")
    (tmp_path / "b.yaml").write_text("learning_rate: 2.0\nseed: 3\n")
    config = load_recipe([tmp_path / "a.yaml"]).config
    assert config["learning_rate"] == 1.0 and config["seed"] == 3
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        load_recipe([tmp_path / "a.yaml"])


AUTHORS_MIRROR = Path("/work/.mirror/ekonwang+UAL4Alignment/repo")


@pytest.mark.parametrize("scenario, baseline, model", list(itertools.product(
    SCENARIOS, BASELINES, [None, "variants/llama-2-7b.yaml"])))
def test_authors_code_overlay_parses_and_sets_their_regime(scenario, baseline, model):
    files = stack(scenario, baseline, None) + [str(RECIPES / "variants/authors_code.yaml")]
    files += [str(RECIPES / model)] if model else []
    args, model_args, data_args = parse_args([*files, "--use_cpu", "true"])
    assert not args.assistant_only_loss and args.completion_only_loss is False
    assert args.loss_normalization == "sample" and args.seed == 1337 and args.num_train_epochs == 10
    assert (args.learning_rate, args.lr_scheduler_type.value, args.warmup_steps) == (4.6875e-5, "constant_with_warmup",
                                                                                     0.9999)
    assert args.weight_decay == 0.01 and args.chat_template_path.endswith("templates/authors.jinja")
    processes = load_recipe(files).launcher["num_processes"]
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, processes) == (1, 64, 1)
    assert model_args.lora_r == 8 and model_args.lora_alpha == 16 and model_args.lora_dropout == 0.1
    assert model_args.lora_target_modules == ["q_proj", "v_proj"]
    if model:
        assert model_args.model_name_or_path == "meta-llama/Llama-2-7b-hf" and args.max_length == 1024
    else:
        assert model_args.model_name_or_path == "mistralai/Mistral-7B-v0.1" and args.max_length == 768


@pytest.mark.parametrize("samples", [6000, 12000, 395])
def test_authors_code_learning_rate_follows_their_never_ending_warmup(samples):
    """Their finetune/ual.py: lr = 3e-4 * step_count / warmup_iters, warmup_iters = int(0.1 * max_iters) micro-steps,
    step_count = optimizer steps, so it never leaves the warm-up. Ours must stay within one step's increment."""
    import torch
    from transformers import get_scheduler

    args, _, _ = parse_args([str(RECIPES / "high_entropy.yaml"), str(RECIPES / "variants/authors_code.yaml"),
                             "--use_cpu", "true"])
    steps = samples * 10 // 64                       # optimizer steps of 10 epochs at effective batch 64
    warmup_iters = int(0.1 * steps * 64)              # theirs, in micro-steps
    theirs = [3e-4 * k / warmup_iters for k in range(1, steps + 1)]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    sched = get_scheduler(args.lr_scheduler_type, opt, num_warmup_steps=args.get_warmup_steps(steps),
                          num_training_steps=steps)
    ours = []
    for _ in range(steps):
        ours.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert theirs[-1] == pytest.approx(4.6875e-5, rel=1 / (6.4 * steps))  # int() drops < 1 of 6.4 N micro-steps
    # ours: lr * (k-1)/N; theirs: 3e-4 * k/warmup_iters. Apart by one step's increment, plus the slope difference
    # int() makes in warmup_iters (0.1 * N * 64 rounded down) accumulated over N steps.
    step, slope_gap = 3e-4 / warmup_iters, abs(3e-4 / warmup_iters - args.learning_rate / steps)
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= (step + steps * slope_gap) * (1 + 1e-9)


def test_authors_template_renders_their_training_text(tokenizer):
    template = (RECIPES / "templates" / "authors.jinja").read_text()
    turns = [("What is 2+2?", "4"), ("And 3+3?", "6")]
    messages = [m for u, a in turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False)
    if AUTHORS_MIRROR.exists():  # their own generate_prompt, where a snapshot of their repository is here
        import ast
        import subprocess

        source = subprocess.run(["git", "-C", str(AUTHORS_MIRROR), "show", "HEAD:scripts/prepare_deita.py"],
                                capture_output=True, text=True, check=True).stdout
        node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "generate_prompt")
        namespace = {}
        exec(compile(ast.Module([node], []), "prepare_deita.py", "exec"), namespace)  # noqa: S102
        generate_prompt = namespace["generate_prompt"]
    else:
        print(f"no snapshot of the authors' repository at {AUTHORS_MIRROR}: checking against the quoted format")

        def generate_prompt(instruction):
            return f"\n### User: {instruction}\n\n### Assistant: "
    assert text == "".join(generate_prompt(u) + a + tokenizer.eos_token for u, a in turns)
