"""Samples per second of ``ual score`` against a loopback judge that takes a fixed time per answer.

    python benchmarks/score_throughput.py                                  # 50 ms judge, concurrency 32, 3000 samples
    python benchmarks/score_throughput.py --concurrency 1 8 32 64 128 --json docs/benchmarks/score_throughput_cpu.json \
        --plot docs/benchmarks/score_throughput_cpu.png

The judge (tests/judge_server.py, a real HTTP/1.1 server) runs in its own process, so its CPU is not the
client's. The bound is concurrency / delay (640/s at 32 and 50 ms); the gap to it is the client's own cost per
request (the openai SDK, httpx, ual's bookkeeping: ``client_cpu_ms_per_sample``) and, once that cost times the
request rate fills a core, the client's CPU itself. The server counts the TCP connections it accepted: with
keep-alive the client opens one per concurrent request, not one per request.
"""

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def serve(delay: float, port_out, stop, stats_out) -> None:
    from judge_server import JudgeServer

    with JudgeServer(delay=delay) as server:
        port_out.put(server.port)
        stop.wait()
        stats_out.put({"requests": len(server.requests), "connections": server.connections,
                       "max_in_flight": server.max_in_flight})


def measure(samples: int, concurrency: int, delay: float) -> dict:
    """One ``ual score`` run (in this process) against a fresh judge process."""
    from ual.score.cli import main as score

    ctx = multiprocessing.get_context("spawn")
    port_q, stats_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=serve, args=(delay, port_q, stop, stats_q), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port_q.get(timeout=60)}/v1"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        src.write_text("".join(json.dumps({"prompt": f"q{i:05d}: what is {i} + 1?", "completion": str(i + 1)}) + "\n"
                               for i in range(samples)))
        start, cpu_start = time.perf_counter(), time.process_time()
        rc = score([str(src), "-o", str(Path(tmp) / "out.jsonl"), "--model", "judge", "--base-url", url,
                    "--concurrency", str(concurrency), "--no-progress"])
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    stop.set()
    server = stats_q.get(timeout=60)
    proc.join(timeout=30)
    if rc != 0 or server["requests"] != samples:
        raise SystemExit(f"concurrency {concurrency}: ual score exited {rc} after {server['requests']} requests")
    return {"samples": samples, "concurrency": concurrency, "judge_delay_s": delay, "seconds": round(seconds, 2),
            "samples_per_s": round(samples / seconds, 1), "bound_per_s": round(concurrency / delay, 1),
            "client_cpu_ms_per_sample": round(1000 * cpu / samples, 3), **server}


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conc = [r["concurrency"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(conc, [r["bound_per_s"] for r in results], "--", color="grey", label="bound: concurrency / judge delay")
    ax.plot(conc, [r["samples_per_s"] for r in results], "o-", label="ual score")
    for r in results:
        ax.annotate(f"{r['samples_per_s']:.0f}", (r["concurrency"], r["samples_per_s"]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(conc, [str(c) for c in conc])
    ax.set_ylim(0, 1.1 * max(min(r["bound_per_s"] for r in results[-2:]), max(r["samples_per_s"] for r in results)))
    ax.set_xlabel("--concurrency")
    ax.set_ylabel("samples / s")
    ax.set_title(f"ual score vs a {1000 * results[0]['judge_delay_s']:.0f} ms loopback judge ({os.cpu_count()} cores)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay", type=float, default=0.05, help="seconds the judge takes per answer")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[32])
    ap.add_argument("--samples", type=int, default=3000, help="per concurrency (at least 20 per concurrent request)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--plot", default=None, help="samples/s against concurrency, as a PNG")
    args = ap.parse_args()
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    import openai  # noqa: F401  (imported before the first timing, not inside it)

    import ual.score.cli  # noqa: F401

    results = []
    for concurrency in args.concurrency:
        samples = max(args.samples, 20 * concurrency) if concurrency > 1 else min(args.samples, 200)
        results.append(measure(samples, concurrency, args.delay))
        print(json.dumps(results[-1]), flush=True)
    from importlib.metadata import version

    report = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0],
              **{name: version(name) for name in ("openai", "httpx2")}, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
