"""``ual eval ... --protocol paper``: the UAL authors' prompt, decoding and metric, checked against their strings.

The reference is ../shared/authors/math_eval.md, which quotes the Python strings of their math_bench.py and
prepare_llama2.py; where a snapshot of their repository is on this machine, their own prompt functions are
also run (extracted from their files by ``ast``, since the files import GPU-only packages).
"""

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, write_jsonl
from ual.eval import protocols
from ual.eval.cli import build_parser, generation_settings, main
from ual.eval.generate import Generation
from ual.eval.maths import TASKS, score_paper

REFERENCE = REPO.parent / "shared" / "authors" / "math_eval.md"
AUTHORS_MIRROR = Path("/work/.mirror/ekonwang+UAL4Alignment/repo")
FAST = ["--max-new-tokens", "12", "--batch-size", "4", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference() -> str:
    if not REFERENCE.exists():
        pytest.skip(f"the authors' protocol notes {REFERENCE} are not on this machine (they live in ../shared)")
    return REFERENCE.read_text(encoding="utf-8")


def quoted_python(line: str) -> list[str]:
    """The Python string literals quoted on one line of the reference, evaluated."""
    return [ast.literal_eval(m) for m in re.findall(r'"(?:[^"\\]|\\.)*"', line)]


def reference_prompt(reference: str, question: str) -> str:
    """The prompt built from the reference's own strings: 'Prompt = ... "<a>" + instruction + "<b>"' and
    'instruction ... "<c>" + "<d>" + question + "<e>"'."""
    lines = reference.splitlines()
    outer = quoted_python(next(line for line in lines if "instruction +" in line and "### User" in line))
    inner = quoted_python(next(line for line in lines if "+ question +" in line))
    instruction = inner[0] + inner[1] + question + inner[2]
    return outer[0] + instruction + outer[1]


def test_maths_prompt_is_the_one_the_reference_quotes(reference):
    question = "Natalia sold clips to 48 of her friends in April. How many?"
    assert protocols.paper_math_prompt(question) == reference_prompt(reference, question)


def test_settings_are_the_reference_defaults(reference):
    assert "max_new_tokens 256" in reference and "max_tokens 512" in reference
    assert "top_k 200" in reference and "temperature 0.8" in reference and "up to\n1536 new tokens" in reference
    assert protocols.PAPER_DECODING == {"temperature": 0.8, "top_k": 200}
    assert protocols.PAPER_MAX_PROMPT_TOKENS == 512
    assert protocols.PAPER_MAX_NEW_TOKENS == {"gsm8k": 256, "metamath": 256, "alpacaeval": 1536}


def _authors_function(path: str, name: str):
    """One function of the authors' file, compiled alone (its module imports GPU-only packages)."""
    source = subprocess.run(["git", "-C", str(AUTHORS_MIRROR), "show", f"HEAD:{path}"], capture_output=True,
                            text=True, check=True).stdout
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace = {}
    exec(compile(ast.Module([node], []), path, "exec"), namespace)  # noqa: S102 - their pure prompt code
    return namespace[name]


@pytest.mark.skipif(not AUTHORS_MIRROR.exists(), reason=f"no snapshot of the authors' repository at {AUTHORS_MIRROR}")
def test_prompts_equal_what_the_authors_code_builds():
    generate_prompt = _authors_function("scripts/prepare_llama2.py", "generate_prompt")
    inside = _authors_function("benchmark/math_bench.py", "generate_inside_parts")
    inputs = _authors_function("benchmark/math_bench.py", "generate_inputs")
    inputs.__globals__.update(generate_inside_parts=inside, generate_prompt=generate_prompt)
    for question in ["What is 2+2?", "A {braced} question\nover two lines"]:
        theirs = inputs({"question": question}, [], config={})["inputs"]
        assert protocols.paper_math_prompt(question) == theirs
    assert protocols.paper_dialogue("Write a poem.") == generate_prompt("Write a poem.")


def test_gold_strings_follow_the_reference_rules():
    assert protocols.paper_gold("gsm8k", "48/2 = <<48/2=24>>24\n#### 72") == "72"
    assert protocols.paper_gold("gsm8k", "a #### b #### 1,234 ") == "1,234"  # the last ####
    assert protocols.paper_gold("metamath", "So x = 5.\nThe answer is: 1,234.") == "1,234"
    assert protocols.paper_gold("metamath", "The answer is: \\frac{3}{4}") == "\\frac{3}{4}"
    with pytest.raises(ValueError):
        protocols.paper_gold("gsm8k", "no marker")


def test_substring_and_math_verify_are_scored_side_by_side():
    rows = [{"question": "q", "answer": "#### 18"}, {"question": "q", "answer": "#### 18"},
            {"question": "q", "answer": "#### 7"}]
    gens = [Generation("It costs 180 dollars. The answer is 180", 9, "eos"),  # substring hit, wrong answer
            Generation("The answer is 18", 4, "eos"),                         # both
            Generation("I do not know", 4, "eos")]                            # neither
    metrics, samples = score_paper(rows, TASKS["gsm8k"], ["18", "18", "7"], ["18", "18", "7"], gens)
    assert [s["correct"] for s in samples] == [True, True, False]
    assert [s["correct_math_verify"] for s in samples] == [False, True, False]
    assert metrics["accuracy"] == pytest.approx(2 / 3) and metrics["accuracy_math_verify"] == pytest.approx(1 / 3)
    assert metrics["correct"] == 2 and metrics["correct_math_verify"] == 1 and metrics["n"] == 3


@pytest.mark.parametrize("task, tokens", [("gsm8k", 256), ("metamath", 256), ("alpacaeval", 1536)])
def test_protocol_paper_means_the_same_decoding_for_every_task(task, tokens):
    extra = ["--data", "x.jsonl"] if task == "metamath" else []
    parse = build_parser().parse_args
    paper = generation_settings(parse(["eval", task, "--model", "m", "--protocol", "paper", *extra]))
    assert (paper.temperature, paper.top_k, paper.max_new_tokens, paper.max_prompt_tokens) == (0.8, 200, tokens, 512)
    ours = generation_settings(parse(["eval", task, "--model", "m", *extra]))
    assert (ours.temperature, ours.top_k, ours.max_prompt_tokens) == (0.0, None, None)
    override = generation_settings(parse(["eval", task, "--model", "m", "--protocol", "paper", "--temperature", "0.5",
                                          "--max-new-tokens", "9", *extra]))
    assert (override.temperature, override.top_k, override.max_new_tokens) == (0.5, 200, 9)


def test_gsm8k_paper_end_to_end_records_the_exact_prompt_and_both_accuracies(tmp_path, tiny_model_path, capsys):
    out = tmp_path / "paper"
    assert main(["eval", "gsm8k", "--model", tiny_model_path, "--limit", "3", "--protocol", "paper", "--seed", "7",
                 "--output-dir", str(out), *FAST]) == 0
    settings = json.loads((out / "settings.json").read_text())
    results = json.loads((out / "results.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    first = json.loads((REPO / "data" / "eval" / "gsm8k_test.jsonl").read_text().splitlines()[0])
    assert settings["protocol"] == "paper" and results["name"] == "gsm8k-paper"
    assert settings["first_prompt"] == protocols.paper_math_prompt(first["question"])
    assert settings["chat_template"] is None
    gen = settings["generation"]
    assert (gen["temperature"], gen["top_k"], gen["max_prompt_tokens"], gen["seed"], gen["decoding"]) == (
        0.8, 200, 512, 7, "sampling")
    assert [s["gold_paper"] for s in samples] == ["18", "3", "70000"]
    m = results["metrics"]
    assert m["accuracy"] == sum(s["correct"] for s in samples) / 3
    assert m["accuracy_math_verify"] == sum(s["correct_math_verify"] for s in samples) / 3
    assert "substring accuracy (the authors')" in capsys.readouterr().out


def test_alpacaeval_paper_prompt_is_plain_text(tmp_path, tiny_model_path):
    out = tmp_path / "alpaca"
    assert main(["eval", "alpacaeval", "--model", tiny_model_path, "--limit", "2", "--protocol", "paper",
                 "--output-dir", str(out), *FAST]) == 0
    settings = json.loads((out / "settings.json").read_text())
    first = json.loads((REPO / "data" / "eval" / "alpaca_eval.json").read_text())[0]["instruction"]
    assert settings["first_prompt"] == "\n\n### User: " + first + "\n\n### Assistant: "
    assert json.loads((out / "results.json").read_text())["name"] == "alpacaeval-paper"


def test_long_prompts_keep_their_last_512_tokens(tiny_model_path):
    from transformers import AutoTokenizer

    from ual.eval.generate import GenerationSettings, encode_prompts

    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    long = "word " * 2000
    ids = encode_prompts(tok, [long], GenerationSettings(max_prompt_tokens=512), raw=True)[0]
    full = tok(long, add_special_tokens=True)["input_ids"]
    assert len(full) > 512 and ids == full[-512:]


@pytest.mark.parametrize("flags, message", [
    (["--chat-template", "t.jinja"], "--chat-template does not apply"),
    (["--num-fewshot", "2"], "0-shot"),
])
def test_paper_protocol_refuses_what_it_cannot_honour(tmp_path, tiny_model_path, capsys, flags, message):
    if "--chat-template" in flags:
        (tmp_path / "t.jinja").write_text("{{ messages }}")
        flags = ["--chat-template", str(tmp_path / "t.jinja")]
    data = write_jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "#### 1"}])
    rc = main(["eval", "gsm8k", "--model", tiny_model_path, "--data", str(data), "--protocol", "paper",
               "--output-dir", str(tmp_path / "o"), *flags, *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


# --- the authors' MetaMath test set ------------------------------------------------------------------------


def metamathqa(n: int) -> list[dict]:
    """MetaMathQA-shaped rows: each source problem appears as several rephrasings (its original_question)."""
    rows = []
    for i in range(n):
        source = i // 3
        rows.append({"query": f"Problem {source}, version {i % 3}: a farmer has {source + 7} cows and buys {i} more.",
                     "response": f"Add them.\nThe answer is: {source + 7 + i}.", "type": "GSM_Rephrased",
                     "original_question": f"original problem {source}"})
    return rows


def test_metamath_testset_is_the_last_1030_rows_with_the_authors_gold(tmp_path, capsys):
    rows = metamathqa(1100)
    src = write_jsonl(tmp_path / "MetaMathQA.jsonl", rows)
    train_rows = rows[:70] + [{"messages": [{"role": "user", "content": rows[80]["query"]},
                                            {"role": "assistant", "content": "x"}]}]
    train = write_jsonl(tmp_path / "train.jsonl", train_rows)
    out = tmp_path / "metamath_test.jsonl"
    assert main(["testset", "metamath", str(src), "--output", str(out), "--train", str(train)]) == 0
    test = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(test) == 1030 and test[0]["source_row"] == 70 and test[-1]["query"] == rows[-1]["query"]
    # gold as their math_bench.py: response.strip(' .').split()[-1]; the parsed one beside it
    assert all(t["gold_paper"] == r["response"].strip(" .").split()[-1] for t, r in zip(test, rows[70:]))
    assert test[0]["gold"] == str(23 + 7 + 70)
    report = json.loads((tmp_path / "metamath_test.jsonl.overlap.json").read_text())["reports"][0]
    # row 80 is copied into training as a chat; rows 70-71 share source problem 23 with training row 69
    assert report["exact"] == 1 and report["test_rows"] == 1030
    assert report["same_original_question"] == 2  # rows 70, 71 (problem 23); the chat row has no original_question
    assert report["near"]["cosine>=0.9"] >= 1 and report["closest"][0]["cosine"] == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "exact 1 of 1030" in printed and "same original_question: 2" in printed
    # the output is never replaced without --overwrite
    assert main(["testset", "metamath", str(src), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_metamath_testset_needs_enough_rows(tmp_path, capsys):
    src = write_jsonl(tmp_path / "small.jsonl", metamathqa(50))
    assert main(["testset", "metamath", str(src), "--output", str(tmp_path / "t.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "has 50 rows" in err and "last 1,030" in err and not (tmp_path / "t.jsonl").exists()


def test_vllm_lora_rank_is_rounded_up_to_a_rank_vllm_accepts():
    from ual.errors import UsageError
    from ual.eval.generate import vllm_lora_rank

    assert [vllm_lora_rank(r) for r in (1, 8, 12, 16, 17, 300, 512)] == [8, 8, 16, 16, 32, 320, 512]
    with pytest.raises(UsageError, match="above the largest"):
        vllm_lora_rank(1024)
