"""Run TRL's own SFTTrainer test module against UALTrainer, offline, to find where the drop-in promise breaks.

    python scripts/trl_sft_tests/run.py --trl-repo /path/to/trl.git --work /tmp/trl-sft            # all three runs
    python scripts/trl_sft_tests/run.py --trl-repo ... --work ... --trainer ual-constant -k toolcall  # one run, a subset

TRL's module (tests/test_sft_trainer.py and its helpers, read from a git checkout or bare mirror of TRL with
`git show`, never copied into this repository) loads tiny models and datasets from the Hub. Offline, this script
builds stand-ins at the same relative paths (``trl-internal-testing/tiny-Qwen2ForCausalLM-2.5`` ...) inside --work
and runs pytest from there, so `from_pretrained` and `load_dataset` find local folders:
- models: random tiny models of the same architectures (transformers configs), with a byte-level BPE tokenizer
  (this repository's tiny one) carrying the family's special tokens and TRL's own copy of the family's chat
  template; vision-language models and architectures whose config cannot be built small get no stand-in;
- datasets: the "zen" configs, tool-call and harmony rows, written in the layouts the tests read.
A stand-in is not the real checkpoint: tests that pin exact tokens of a real tokenizer fail with SFTTrainer too.
That is why the target is relative: every test that passes with SFTTrainer here should pass with UALTrainer.

Runs: ``sft`` (TRL's SFTTrainer, the reference), ``ual-constant`` (UALTrainer, constant eps 0.1) and ``ual-none``
(eps 0). For the UAL runs a pytest plugin (plugin.py) replaces ``trl.SFTTrainer`` by a UALTrainer that converts the
test's SFTConfig / TrainingArguments, exactly as a user switching trainers would get. Names the installed TRL lacks
(the module may be newer than the pinned trl) are filled with placeholders that fail when used, for both trainers.
Writes <work>/results/<run>.json (test id -> outcome) and prints the comparison.
"""

import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from substitutes import build_all  # noqa: E402

TEST_FILES = ["__init__.py", "conftest.py", "testing_utils.py", "testing_constants.py", "test_sft_trainer.py"]
RUNS = ["sft", "ual-constant", "ual-none"]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"--trl-repo {repo}: git {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1]}")
    return done.stdout


def extract_tests(repo: Path, commit: str, work: Path) -> str:
    sha = git(repo, "rev-parse", "--verify", f"{commit}^{{commit}}").strip()
    (work / "tests").mkdir(parents=True, exist_ok=True)
    for name in TEST_FILES:
        (work / "tests" / name).write_text(git(repo, "show", f"{sha}:tests/{name}"))
    return sha


def outcomes(junit: Path) -> dict[str, str]:
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case]
        out[test_id] = ("failed" if "failure" in kinds else "error" if "error" in kinds
                        else "skipped" if "skipped" in kinds else "passed")
    return out


def run_module(work: Path, run: str, extra: list[str], timeout: int) -> dict[str, str]:
    results = work / "results"
    results.mkdir(exist_ok=True)
    junit = results / f"{run}.xml"
    env = {**os.environ, "UAL_TRL_TESTS_TRAINER": run, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "HF_DATASETS_CACHE": str(work / "datasets_cache")}
    cmd = [sys.executable, "-m", "pytest", "tests/test_sft_trainer.py", "-p", "plugin", "-p", "no:cacheprovider",
           "-q", "-rN", f"--timeout={timeout}", f"--junitxml={junit}", "-o", "addopts=", *extra]
    print(f"[{run}] {' '.join(cmd)}", flush=True)
    junit.unlink(missing_ok=True)
    subprocess.run(cmd, cwd=work, env=env, check=False)
    if not junit.exists():
        raise SystemExit(f"[{run}] pytest wrote no report: see its output above")
    got = outcomes(junit)
    (results / f"{run}.json").write_text(json.dumps(got, indent=1, sort_keys=True))
    return got


def compare(results: dict[str, dict[str, str]]) -> str:
    ref = results["sft"]
    passed = sorted(t for t, o in ref.items() if o == "passed")
    lines = [f"TRL's module: {len(ref)} tests; with SFTTrainer here: "
             + ", ".join(f"{k} {sum(o == k for o in ref.values())}" for k in ("passed", "failed", "error", "skipped"))]
    for run, got in results.items():
        if run == "sft":
            continue
        ran = [t for t in passed if t in got]  # a -k run collects only some tests
        broken = [t for t in ran if got[t] != "passed"]
        lines.append(f"{run}: {len(ran) - len(broken)} of the {len(ran)} SFTTrainer passes it ran also pass; "
                     f"{len(broken)} do not")
        lines += [f"    {got[t]}: {t}" for t in broken]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trl-repo", type=Path, required=True, help="a git checkout or mirror of huggingface/trl")
    ap.add_argument("--commit", default="HEAD", help="the TRL commit whose tests to run")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (stand-ins, results)")
    ap.add_argument("--trainer", choices=RUNS, action="append", help="run only these (default: all three)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per test")
    ap.add_argument("-k", default=None, help="pytest -k expression")
    args = ap.parse_args()
    work = args.work.resolve()
    sha = extract_tests(args.trl_repo, args.commit, work)
    print(f"TRL tests at {sha}; stand-ins: {build_all(work)}", flush=True)
    extra = ["-k", args.k] if args.k else []
    results = {}
    for run in args.trainer or RUNS:
        results[run] = run_module(work, run, extra, args.timeout)
    if "sft" not in results and (work / "results" / "sft.json").exists():
        results = {"sft": json.loads((work / "results" / "sft.json").read_text()), **results}
    if "sft" in results:
        report = compare(results)
        (work / "results" / "comparison.txt").write_text(report + "\n")
        print(report)


if __name__ == "__main__":
    main()
