"""The two evaluation protocols: ``ual`` (this project's) and ``paper`` (the UAL authors' code, reproduced).

``ual``: the question as the only user turn through the model's chat template, greedy decoding, the model's
final answer parsed and compared with math-verify. ``paper`` follows the authors' ``benchmark/math_bench.py`` and
``benchmark/alpaca_eval_generate.py`` (github.com/ekonwang/UAL4Alignment, commit 3ed0ffc):

- the prompt is plain text in their Vicuna-like format, with no chat template. It is tokenized with the
  tokenizer's own special tokens (their tokenizer adds BOS) and cut to its last 512 tokens;
- decoding samples at temperature 0.8 with top-k 200: 256 new tokens for maths, 1,536 for AlpacaEval;
- the clustering analysis reads the 300 LIMA test prompts alone (no responses) in their LIMA prompt format, up
  to 1,024 tokens, and their plotting script keeps the 100 token pairs with the largest UAL/LS silhouette ratio;
- a maths answer counts when the gold string occurs anywhere in the output ("18" matches "180"). The gold is
  the text after GSM8K's last ``####``, and the last word of a MetaMath response.
"""

from __future__ import annotations

PROTOCOLS = ("ual", "paper")

PAPER_DECODING = {"temperature": 0.8, "top_k": 200}
PAPER_MAX_PROMPT_TOKENS = 512  # their max_tokens: the prompt's last 512 tokens are kept
PAPER_MAX_NEW_TOKENS = {"gsm8k": 256, "metamath": 256, "alpacaeval": 1536}
PAPER_MATH_PREFIX = "Here are some questions and answers about math:\n\n"


def paper_dialogue(instruction: str) -> str:
    """Their ``generate_prompt(instruction)`` (``sys=False``): the instruction as a '### User:' turn."""
    return "\n\n### User: " + instruction + "\n\n### Assistant: "


def paper_lima_prompt(instruction: str) -> str:
    """Their LIMA prompt (``scripts/prepare_lima.py``'s ``generate_prompt``: ONE leading newline, unlike the
    maths one), used for the clustering analysis over the 300 LIMA test prompts."""
    return "\n### User: " + instruction + "\n\n### Assistant: "


def paper_math_prompt(question: str) -> str:
    """Their 0-shot maths prompt: the fixed preface, the question in a fenced block, in the dialogue format."""
    return paper_dialogue(PAPER_MATH_PREFIX + "\n# Question:\n```\n" + question + "\n```\n")


def paper_gold(task: str, solution: str) -> str:
    """The gold string their script looks for in the output."""
    if task == "gsm8k":
        if "####" not in solution:
            raise ValueError("no '####' in the solution")
        return solution.rsplit("####", 1)[1].strip()
    if task == "metamath":
        words = solution.strip(" .").split()
        if not words:
            raise ValueError("empty response")
        return words[-1]
    raise ValueError(f"no paper gold rule for task {task!r}")


def substring_hit(gold: str, output: str) -> bool:
    """Their criterion, ``sample['answer'] in resp``: any occurrence counts."""
    return gold in output
