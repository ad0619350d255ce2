"""Loss head alone: forward + backward from hidden states [N, H] and lm_head weight [V, H].

    python benchmarks/loss_head.py                       # CPU defaults: V in {32000, 128256}, N=2048, H=1024
    python benchmarks/loss_head.py --dtype bfloat16      # on a GPU (the script picks cuda when present)

Variants (what a user of TRL 1.16 would otherwise run, and the floor):
  a  trl_fused      TRL's fused NLL head (eps = 0), as SFTTrainer calls it (log_probs, entropy, is_top1)
  b  trl_ls         TRL's label_smoothing_factor path: full logits + transformers' LabelSmoother, plus the
                    no-grad fused pass SFTTrainer runs for its metrics
  c  naive          full-logits per-sample smoothing (log_softmax over [N, V])
  d  ual_paper      this project's chunked per-sample smoothing, paper convention
  d  ual_uniform    the same, uniform convention
  d  ual_*_compiled the same two with compiled=True: torch.compile fuses each chunk's elementwise work
  d  ual_paper_sample  ual_paper with loss_normalization 'sample': each token weighted 1/n_i by the head
  d  ual_unigram[_compiled]  smoothing toward a Zipf-shaped prior over the vocabulary (smoothing_prior 'unigram')
  e  floor          the three products the head cannot avoid: logits, grad of hidden, grad of weight

Every variant is first checked against a float64 full-logits reference at the benchmark's own size; a variant
that disagrees is reported as such and gets no numbers. Times are interleaved over repeats (median, min-max);
each variant's peak memory is measured in its own subprocess and reported as working memory: peak minus what
the inputs, the weight and their gradients occupy. Results: JSON + Markdown table (+ the memory-vs-N plot with
--plot-memory) under --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

VARIANTS = ["trl_fused", "trl_ls", "naive", "ual_paper", "ual_uniform", "ual_paper_compiled", "ual_uniform_compiled",
            "ual_paper_sample", "ual_unigram", "ual_unigram_compiled", "floor"]
LS_EPS = 0.1


def make_inputs(n, h, v, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g) * 0.5).to(dtype).to(device).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(dtype).to(device).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=g).to(device)
    # per-token eps: samples of 64..512 tokens, each with its own eps in [0, 0.3]
    eps = torch.empty(n)
    i = 0
    while i < n:
        length = int(torch.randint(64, 513, (1,), generator=g))
        eps[i : i + length] = float(torch.rand(1, generator=g)) * 0.3
        i += length
    return hidden, weight, labels, eps.to(device)


@functools.lru_cache(maxsize=4)
def zipf_prior(v, device, seed=0):
    """A unigram-like distribution over the vocabulary: Zipf weights 1/(rank + 10) over shuffled token ids."""
    ranks = torch.randperm(v, generator=torch.Generator().manual_seed(seed)).double()
    weights = 1 / (ranks + 10)
    return (weights / weights.sum()).to(device)


def sample_weights(eps):
    """1/n_i per token and the sample count, for make_inputs' samples (each a run of one eps)."""
    from ual.loss import sample_token_weights

    starts = torch.cat([torch.ones(1, dtype=torch.long, device=eps.device), (eps[1:] != eps[:-1]).long()])
    return sample_token_weights(starts.cumsum(0))


def run_variant(name, hidden, weight, labels, eps, chunk_size=None):
    """Forward + backward of one variant; returns the scalar loss (mean over tokens)."""
    n = labels.shape[0]
    if name == "trl_fused":
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

        logprobs, *_ = ChunkedLogProbFunction.apply(
            hidden, weight, None, labels, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ("entropy", "is_top1")
        )
        loss = -logprobs.sum() / n
    elif name == "trl_ls":
        from transformers.trainer_pt_utils import LabelSmoother
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

        logits = F.linear(hidden, weight)
        loss = LabelSmoother(epsilon=LS_EPS)({"logits": logits}, labels)
        with torch.no_grad():  # SFTTrainer's second pass, for entropy / accuracy metrics
            ChunkedLogProbFunction.apply(
                hidden, weight, None, labels, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ("entropy", "is_top1")
            )
    elif name == "naive":
        logp = F.linear(hidden, weight).float().log_softmax(-1)
        nll = -logp.gather(1, labels[:, None]).squeeze(1)
        off = -(logp.sum(-1) + nll) / (weight.shape[0] - 1)
        loss = ((1 - eps) * nll + eps * off).sum() / n
    elif name.startswith("ual_"):
        from ual.loss import smoothed_cross_entropy

        weights, samples = sample_weights(eps) if name.endswith("_sample") else (None, n)
        unigram = name.startswith("ual_unigram")
        out = smoothed_cross_entropy(
            hidden, weight, labels, eps, convention="uniform" if unigram else name.split("_")[1],
            chunk_size=chunk_size, compiled=name.endswith("_compiled"), token_weight=weights,
            prior=zipf_prior(weight.shape[0], weight.device) if unigram else None,
        )
        loss = out.loss.sum() / samples
    elif name == "floor":
        with torch.no_grad():
            z = hidden @ weight.t()
            z @ weight
            z.t() @ hidden
        return None
    else:
        raise ValueError(name)
    loss.backward()
    return loss.detach()


def reference(name, hidden, weight, labels, eps):
    """float64 full logits: the loss each variant claims to compute, and its gradients."""
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    logp = (h @ w.t()).log_softmax(-1)
    nll = -logp.gather(1, labels[:, None]).squeeze(1)
    vocab = w.shape[0]
    e = eps.double()
    if name == "trl_fused":
        per = nll
    elif name == "trl_ls":
        per = (1 - LS_EPS) * nll - LS_EPS * logp.mean(-1)
    elif name.startswith("ual_unigram"):
        per = (1 - e) * nll - e * (logp @ zipf_prior(vocab, logp.device))
    elif name.startswith("ual_uniform"):
        per = (1 - e) * nll - e * logp.mean(-1)
    else:  # paper convention: naive and ual_paper
        per = (1 - e) * nll + e * (-(logp.sum(-1) + nll) / (vocab - 1))
    if name.endswith("_sample"):
        weights, samples = sample_weights(eps)
        loss = (per * weights.to(per.device)).sum() / samples
    else:
        loss = per.mean()
    loss.backward()
    return loss.detach(), h.grad, w.grad


def check(name, hidden, weight, labels, eps, chunk_size, tol):
    """Relative error of loss and gradients against the float64 reference."""
    for t in (hidden, weight):
        t.grad = None
    loss = run_variant(name, hidden, weight, labels, eps, chunk_size)
    ref_loss, ref_h, ref_w = reference(name, hidden, weight, labels, eps)
    errors = {
        "loss": abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)),
        "grad_hidden": float((hidden.grad.double() - ref_h).norm() / ref_h.norm()),
        "grad_weight": float((weight.grad.double() - ref_w).norm() / ref_w.norm()),
    }
    return errors, all(err <= tol for err in errors.values())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_variants(variants, n, h, v, dtype, device, repeats, chunk_size):
    hidden, weight, labels, eps = make_inputs(n, h, v, dtype, device)
    times = {name: [] for name in variants}
    for name in dict.fromkeys([variants[0], *(v for v in variants if v.endswith("_compiled"))]):
        run_variant(name, hidden, weight, labels, eps, chunk_size)  # warm-up (allocator, kernels, compilation)
    for _ in range(repeats):
        order = list(variants)
        random.shuffle(order)
        for name in order:
            hidden.grad = weight.grad = None
            sync(device)
            start = time.perf_counter()
            run_variant(name, hidden, weight, labels, eps, chunk_size)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def memory_child(name, n, h, v, dtype, device, chunk_size) -> int:
    """Run once in this (fresh) process; return the working memory in bytes.

    A first run pays for lazy imports and allocator warm-up; then the peak is reset (CUDA's counters, or Linux's
    resident high-water mark via /proc/self/clear_refs) and the second run is measured.
    """
    dtype = getattr(torch, dtype)
    device = torch.device(device)
    hidden, weight, labels, eps = make_inputs(n, h, v, dtype, device)
    run_variant(name, hidden, weight, labels, eps, chunk_size)
    hidden.grad = weight.grad = None
    grads = hidden.numel() * hidden.element_size() + weight.numel() * weight.element_size()
    if name == "floor":
        grads = 0  # the floor's products stand in for the gradients themselves
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_variant(name, hidden, weight, labels, eps, chunk_size)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base - grads
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    base = _status_kib("VmRSS") * 1024
    run_variant(name, hidden, weight, labels, eps, chunk_size)
    return _status_kib("VmHWM") * 1024 - base - grads


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(name, n, h, v, dtype, device, chunk_size) -> int:
    cmd = [sys.executable, __file__, "--memory-child", name, str(n), str(h), str(v), dtype, str(device),
           str(chunk_size or 0)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def fmt_s(values):
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        name, n, h, v, dtype, device, chunk = sys.argv[2:9]
        print(memory_child(name, int(n), int(h), int(v), dtype, device, int(chunk) or None))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--dtype", default=None, help="float32 on CPU (default), bfloat16 on a GPU (default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None, help="ual loss chunk (tokens); default: automatic")
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--memory-vs-tokens", type=int, nargs="*", default=[],
                        help="also measure working memory of naive and ual_paper at these N (first vocab)")
    parser.add_argument("--tol", type=float, default=None, help="relative error allowed vs float64")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--tag", default=None, help="result file name (default: loss_head_<device>)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    tol = args.tol if args.tol is not None else (1e-4 if dtype == torch.float32 else 2e-2)
    device_desc = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'cpu'}, {os.cpu_count()} cores"
    results = {"device": device_desc, "dtype": dtype_name, "torch": torch.__version__, "tokens": args.tokens,
               "hidden": args.hidden, "repeats": args.repeats, "tol": tol, "runs": []}
    args.out.mkdir(parents=True, exist_ok=True)
    for v in args.vocab:
        print(f"== V={v} N={args.tokens} H={args.hidden} {dtype_name} on {device_desc}", flush=True)
        hidden, weight, labels, eps = make_inputs(args.tokens, args.hidden, v, dtype, device)
        checked, agree = {}, []
        for name in args.variants:
            if name == "floor":
                agree.append(name)
                continue
            errors, ok = check(name, hidden, weight, labels, eps, args.chunk_size, tol)
            checked[name] = {**errors, "agrees": ok}
            print(f"  check {name:12s} {'ok ' if ok else 'DISAGREES'} {errors}", flush=True)
            if ok:
                agree.append(name)
        del hidden, weight, labels, eps
        times = time_variants(agree, args.tokens, args.hidden, v, dtype, device, args.repeats, args.chunk_size)
        memory = {name: measure_memory(name, args.tokens, args.hidden, v, dtype_name, device, args.chunk_size)
                  for name in agree}
        run = {"vocab": v, "check": checked, "seconds": times, "working_memory_bytes": memory}
        for name in agree:
            print(f"  {name:12s} {fmt_s(times[name])} s   working memory {memory[name] / 2**20:8.1f} MiB", flush=True)
        results["runs"].append(run)

    if args.memory_vs_tokens:
        v = args.vocab[0]
        curve = {name: {} for name in ("naive", "ual_paper")}
        for n in args.memory_vs_tokens:
            for name in curve:
                curve[name][n] = measure_memory(name, n, args.hidden, v, dtype_name, device, args.chunk_size)
                print(f"  memory {name:10s} N={n:6d}: {curve[name][n] / 2**20:8.1f} MiB", flush=True)
        results["memory_vs_tokens"] = {"vocab": v, "curve": curve}

    tag = args.tag or f"loss_head_{device.type}"
    (args.out / f"{tag}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"{tag}.md").write_text(markdown(results))
    if args.memory_vs_tokens:
        plot_memory(results, args.out / f"{tag}_memory.png")
    print(f"wrote {args.out / tag}.json/.md")


def markdown(results) -> str:
    lines = [f"Device: {results['device']}, {results['dtype']}, torch {results['torch']}; N = {results['tokens']} "
             f"tokens, H = {results['hidden']}; forward + backward, median (min–max) of {results['repeats']}.", ""]
    for run in results["runs"]:
        t = {k: statistics.median(v) for k, v in run["seconds"].items()}
        mem = run["working_memory_bytes"]
        lines += [f"**V = {run['vocab']:,}**", "",
                  "| variant | time s | × floor | × trl_fused | working memory MiB | × trl_fused memory | check vs float64 |",
                  "|---|---|---|---|---|---|---|"]
        for name in VARIANTS:
            if name not in run["seconds"]:
                if name in run["check"]:
                    lines.append(f"| {name} | — | — | — | — | — | disagrees: {run['check'][name]} |")
                continue
            ratio = lambda d, k: f"{d[name] / d[k]:.2f}" if k in d and d[k] > 0 else "—"  # noqa: E731
            c = run["check"].get(name)
            check = "—" if c is None else f"ok (max rel err {max(v for k, v in c.items() if k != 'agrees'):.1e})"
            lines.append(f"| {name} | {fmt_s(run['seconds'][name])} | {ratio(t, 'floor')} | {ratio(t, 'trl_fused')} | "
                         f"{mem[name] / 2**20:.0f} | {ratio(mem, 'trl_fused')} | {check} |")
        lines.append("")
    if "memory_vs_tokens" in results:
        mv = results["memory_vs_tokens"]
        ns = sorted(int(n) for n in next(iter(mv["curve"].values())))
        lines += [f"Working memory against N (V = {mv['vocab']:,}), MiB:", "", "| N | " + " | ".join(map(str, ns)) + " |",
                  "|---|" + "---|" * len(ns)]
        for name, curve in mv["curve"].items():
            lines.append(f"| {name} | " + " | ".join(f"{curve[n] / 2**20:.0f}" for n in ns) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_memory(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mv = results["memory_vs_tokens"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in mv["curve"].items():
        ns = sorted(int(n) for n in curve)
        ax.plot(ns, [curve[n] / 2**20 for n in ns], marker="o", label={"naive": "naive full logits (c)",
                "ual_paper": "ual chunked (d)"}.get(name, name))
    ax.set_xlabel("tokens N")
    ax.set_ylabel("working memory, MiB (peak − inputs − grads)")
    ax.set_title(f"Loss head working memory, V = {mv['vocab']:,}, H = {results['hidden']}, {results['dtype']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
