"""What only a GPU can show, beyond the two timing scripts: run on a CUDA machine, results as JSON.

    python benchmarks/gpu_checks.py --out docs/benchmarks      # -> gpu_checks_<device>.json (+ the Triton code)

1. QLoRA placement: the tiny recipe + the QLoRA keys through `ual.train.main` on the GPU; where every parameter
   lives (4-bit base on the GPU, LoRA weights trainable, nothing left on the CPU) and that the loss is finite.
2. The compiled loss head's Triton code (bf16): the generated kernels are written out, and the number of
   [chunk, V]-sized buffers the code allocates is counted (the CPU test reads the C++ code the same way).
3. Padding-free attention: the per-token loss of two sequences packed into one row (position_ids restart, no
   attention mask) against the same two padded, for each attention implementation that loads here.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def qlora_placement(tmp: Path) -> dict:
    import bitsandbytes as bnb
    import yaml

    from ual.train import main as train_main

    overlay = {"use_peft": True, "lora_r": 8, "lora_alpha": 16, "lora_target_modules": ["q_proj", "v_proj"],
               "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "use_bnb_nested_quant": True,
               "dtype": "bfloat16", "bf16": True}
    (tmp / "qlora.yaml").write_text(yaml.safe_dump(overlay))
    torch.cuda.reset_peak_memory_stats()
    trainer = train_main([str(REPO / "recipes/tiny.yaml"), str(tmp / "qlora.yaml"), "--output_dir",
                          str(tmp / "qlora_out"), "--max_steps", "6", "--logging_steps", "1", "--report_to", "none",
                          "--use_cpu", "false"])
    model = trainer.model
    devices, dtypes = {}, {}
    for name, p in model.named_parameters():
        devices[str(p.device)] = devices.get(str(p.device), 0) + 1
        kind = "trainable" if p.requires_grad else "frozen"
        dtypes.setdefault(kind, {})
        dtypes[kind][str(p.dtype)] = dtypes[kind].get(str(p.dtype), 0) + 1
    four_bit = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {"parameter_devices": devices, "parameter_dtypes": dtypes, "linear4bit_modules": len(four_bit),
              "linear4bit_example": four_bit[:2], "losses": losses,
              "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20}
    result["ok"] = (set(devices) == {"cuda:0"} and len(four_bit) > 0 and bool(losses)
                    and all(map(lambda x: x == x and abs(x) < 1e4, losses)))
    return result


def compiled_head_code(out: Path, tmp: Path) -> dict:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "0"
    from ual.loss import default_chunk_size, smoothed_cross_entropy

    n, h, v = 4096, 1024, 32000
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(n, h, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
    weight = (torch.randn(v, h, device="cuda", generator=g) / h**0.5).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, v, (n,), device="cuda", generator=g)
    eps = torch.rand(n, device="cuda", generator=g) * 0.3
    res = smoothed_cross_entropy(hidden, weight, labels, eps, compiled=True)
    res.loss.sum().backward()
    code_files = [f for f in glob.glob(str(tmp / "inductor" / "**" / "*.py"), recursive=True)
                  if "triton" in Path(f).read_text(errors="ignore")]
    chunk = default_chunk_size(v)
    text = "\n\n".join(f"# ===== {Path(f).name}\n" + Path(f).read_text() for f in sorted(code_files))
    (out / "compiled_head_triton_code.py.txt").write_text(text)
    # buffers the generated wrapper allocates: empty_strided_cuda((s, 32000), ...) with any first dimension
    allocs = re.findall(r"empty_strided_cuda\(\(([^)]*)\),\s*\(([^)]*)\),\s*torch\.(\w+)\)", text)
    vocab_sized = [a for a in allocs if re.search(rf"\b{v}\b", a[0])]
    kernels = sorted(set(re.findall(r"def (triton_\w+)\(", text)))
    return {"chunk_tokens": chunk, "code_files": len(code_files), "triton_kernels": kernels,
            "vocab_sized_buffers": [f"({a[0]}) {a[2]}" for a in vocab_sized],
            "loss_finite": bool(torch.isfinite(res.loss).all())}


def padding_free(tmp: Path) -> dict:
    from transformers import AutoModelForCausalLM

    lengths = [37, 91]
    g = torch.Generator().manual_seed(0)
    results = {}
    # flex_attention last and each result printed at once: its compilation has crashed the process before
    for impl in ["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"]:
        try:
            model = AutoModelForCausalLM.from_pretrained(REPO / "models/tiny-llama", dtype=torch.float32,
                                                         attn_implementation=impl).cuda().eval()
            vocab = model.config.vocab_size
            seqs = [torch.randint(3, vocab, (n,), generator=g).cuda() for n in lengths]
            with torch.no_grad():
                padded = [model(input_ids=s[None]).logits[0] for s in seqs]
                packed = model(input_ids=torch.cat(seqs)[None],
                               position_ids=torch.cat([torch.arange(n) for n in lengths]).cuda()[None]).logits[0]
        except Exception as exc:  # noqa: BLE001 - report why an implementation fails, then try the next
            results[impl] = {"ran": False, "why": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            print("padding_free", impl, results[impl], flush=True)
            continue
        want = torch.cat(padded)
        results[impl] = {"ran": True, "max_abs_logit_diff": float((packed - want).abs().max()),
                         "second_sequence_diff": float((packed[lengths[0]:] - padded[1]).abs().max())}
        print("padding_free", impl, results[impl], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--checks", nargs="+", default=["qlora", "triton", "padding_free"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_checks: no CUDA device here")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in [("padding_free", lambda: padding_free(Path(tmp))),
                         ("triton", lambda: compiled_head_code(args.out, Path(tmp))),
                         ("qlora", lambda: qlora_placement(Path(tmp)))]:
            if name not in args.checks:
                continue
            try:
                report[name] = fn()
            except Exception:  # noqa: BLE001 - one failed check must not hide the others' results
                report[name] = {"error": traceback.format_exc()[-2000:]}
            print(name, json.dumps(report[name], indent=1)[:3000], flush=True)
    tag = re.sub(r"[^a-z0-9]+", "_", report["device"].lower()).strip("_")
    (args.out / f"gpu_checks_{tag}.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
