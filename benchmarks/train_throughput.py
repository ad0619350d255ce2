"""Whole training steps: tokens/s and peak memory of SFTTrainer vs UALTrainer on the same model, data and batch.

    python benchmarks/train_throughput.py                 # CPU: V=32000, hidden 384, 4 layers, fp32 (~10 min)
    python benchmarks/train_throughput.py --hidden 512 --steps 30 --rounds 3

Variants: sft_default (SFTTrainer, TRL's fused NLL head), sft_ls (SFTTrainer with label_smoothing_factor=0.1:
full logits + LabelSmoother + a no-grad metrics pass), ual_constant (UALTrainer, eps = 0.1 for all) and
ual_uncertainty (UALTrainer, the paper's mapping, mean 0.1), both with the default loss head (compiled on CUDA,
eager on CPUs), and ual_uncertainty_compiled (the same with loss_compile=True, so CPUs show it too). Each run is
its own subprocess (so its peak memory is its own); rounds interleave the variants in a shuffled order and the medians are reported with ratios to
sft_default. The first steps of each run (warm-up) are not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ["sft_default", "sft_ls", "ual_constant", "ual_uncertainty", "ual_uncertainty_compiled"]


def build_model(out: Path, vocab: int, hidden: int, layers: int) -> None:
    """A random-init Llama with a real vocabulary size, using the tiny model's tokenizer (ids < its vocab)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(REPO / "models" / "tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=2048, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)


def child(variant: str, model_dir: str, steps: int, warmup: int, batch: int, max_length: int) -> dict:
    """One training run in this process: returns tokens/s after warm-up and the peak resident memory."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from ual.config import UALConfig
    from ual.formats import convert
    from ual.trainer import UALTrainer

    rows = []
    for name, fmt in (("gsm8k_train_200.jsonl", "gsm8k"), ("alpaca_200.jsonl", "alpaca")):
        for line in (REPO / "data" / "sample" / name).read_text().splitlines():
            row = json.loads(line)
            rows.append({**convert(row, fmt), "uncertainty": row["uncertainty"]})
    dataset = Dataset.from_list(rows)
    common = dict(
        output_dir=tempfile.mkdtemp(), use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(),
        activation_checkpointing=False, report_to="none", per_device_train_batch_size=batch, max_length=max_length,
        max_steps=steps, save_strategy="no", logging_steps=10**9, seed=0, disable_tqdm=True, dataloader_num_workers=0,
    )
    if variant.startswith("sft"):
        args = SFTConfig(**common, label_smoothing_factor=0.1 if variant == "sft_ls" else 0.0)
        trainer = SFTTrainer(model=model_dir, args=args, train_dataset=dataset.remove_columns("uncertainty"))
    else:
        strategy = "constant" if variant == "ual_constant" else "uncertainty"
        compiled = True if variant.endswith("_compiled") else None  # None: the default for this device
        args = UALConfig(**common, smoothing_strategy=strategy, smoothing_mean=0.1, loss_compile=compiled)
        trainer = UALTrainer(model=model_dir, args=args, train_dataset=dataset)

    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if state.global_step in (warmup, steps):
                marks[state.global_step] = (time.perf_counter(), trainer._total_train_tokens)

    trainer.add_callback(Clock())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    (t0, n0), (t1, n1) = marks[warmup], marks[steps]
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else _status_kib("VmHWM") * 1024
    return {"tokens_per_s": (n1 - n0) / (t1 - t0), "peak_bytes": peak, "tokens": n1 - n0, "seconds": t1 - t0}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        variant, model_dir, steps, warmup, batch, max_length = sys.argv[2:8]
        print(json.dumps(child(variant, model_dir, int(steps), int(warmup), int(batch), int(max_length))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = {name: [] for name in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp), args.vocab, args.hidden, args.layers)
        for r in range(args.rounds):
            order = random.sample(args.variants, len(args.variants))
            for name in order:
                cmd = [sys.executable, __file__, "--child", name, tmp, str(args.steps), str(args.warmup),
                       str(args.batch), str(args.max_length)]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results[name].append(res)
                print(f"round {r} {name:24s} {res['tokens_per_s']:9.1f} tok/s  peak {res['peak_bytes'] / 2**20:8.1f} MiB",
                      flush=True)

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {os.cpu_count()} cores"
    med = {n: statistics.median(r["tokens_per_s"] for r in runs) for n, runs in results.items()}
    mem = {n: statistics.median(r["peak_bytes"] for r in runs) for n, runs in results.items()}
    lines = [f"Device: {device}; model: Llama, V = {args.vocab:,}, hidden {args.hidden}, {args.layers} layers; "
             f"batch {args.batch} x up to {args.max_length} tokens, {args.steps} steps ({args.warmup} warm-up); "
             f"median (min–max) of {args.rounds} interleaved rounds, each run its own process.", "",
             "| variant | tokens/s | × sft_default | × sft_ls | peak memory MiB | × sft_default memory |",
             "|---|---|---|---|---|---|"]
    ratio = lambda d, name, base: f"{d[name] / d[base]:.3f}" if base in d else "—"  # noqa: E731
    for name in args.variants:
        tps = [r["tokens_per_s"] for r in results[name]]
        lines.append(f"| {name} | {med[name]:.0f} ({min(tps):.0f}–{max(tps):.0f}) | {ratio(med, name, 'sft_default')} | "
                     f"{ratio(med, name, 'sft_ls')} | {mem[name] / 2**20:.0f} | {ratio(mem, name, 'sft_default')} |")
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"train_throughput_{'cuda' if torch.cuda.is_available() else 'cpu'}"
    (args.out / f"{tag}.json").write_text(json.dumps({"device": device, "args": vars(args) | {"out": str(args.out)},
                                                      "runs": results}, indent=2))
    (args.out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
