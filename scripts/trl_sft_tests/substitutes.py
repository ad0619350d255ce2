"""Offline stand-ins for the Hub repositories TRL's SFTTrainer tests load (see run.py): tiny random models of the
same architectures and small datasets in the layouts the tests read."""

import json
import re
from pathlib import Path

import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import trl

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = Path(trl.__file__).parent / "chat_templates"
ORG = "trl-internal-testing"

# model id -> (model_type, TRL's template file or None, eos, pad, bos, extra config)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)
MODELS = {
    "tiny-Qwen2ForCausalLM-2.5": ("qwen2", "qwen2_5.jinja", "<|im_end|>", "<|endoftext|>", None, {}),
    "tiny-Qwen3ForCausalLM": ("qwen3", "qwen3.jinja", "<|im_end|>", "<|endoftext|>", None, {}),
    "tiny-Qwen3MoeForCausalLM": ("qwen3_moe", "qwen3.jinja", "<|im_end|>", "<|endoftext|>", None, MOE),
    "tiny-GptOssForCausalLM": ("gpt_oss", "gptoss.jinja", "<|return|>", "<|endoftext|>", None,
                               dict(num_local_experts=4, num_experts_per_tok=2, layer_types=None)),
    "tiny-LlamaForCausalLM-3": ("llama", "llama3.jinja", "<|eot_id|>", "<|finetune_right_pad_id|>",
                                "<|begin_of_text|>", {}),
    "tiny-LlamaForCausalLM-3.1": ("llama", "llama3_1.jinja", "<|eot_id|>", "<|finetune_right_pad_id|>",
                                  "<|begin_of_text|>", {}),
    "tiny-LlamaForCausalLM-3.2": ("llama", "llama3_2.jinja", "<|eot_id|>", "<|finetune_right_pad_id|>",
                                  "<|begin_of_text|>", {}),
    "tiny-MistralForCausalLM-0.1": ("mistral", None, "</s>", "</s>", "<s>", {}),
    "tiny-MistralForCausalLM-0.2": ("mistral", None, "</s>", "</s>", "<s>", {}),
    "tiny-GemmaForCausalLM": ("gemma", "gemma.jinja", "<eos>", "<pad>", "<bos>", {}),
    "tiny-Gemma2ForCausalLM": ("gemma2", "gemma.jinja", "<eos>", "<pad>", "<bos>", {}),
    "tiny-CohereForCausalLM": ("cohere", "cohere.jinja", "<|END_OF_TURN_TOKEN|>", "<PAD>", "<BOS_TOKEN>", {}),
    "tiny-Cohere2ForCausalLM": ("cohere2", "cohere2.jinja", "<|END_OF_TURN_TOKEN|>", "<PAD>", "<BOS_TOKEN>", {}),
    "tiny-Phi3ForCausalLM": ("phi3", "phi3.jinja", "<|end|>", "<|endoftext|>", None, {}),
    "tiny-GPTNeoXForCausalLM": ("gpt_neox", None, "<|endoftext|>", "<|padding|>", None, {}),
    "tiny-Olmo3ForCausalLM": ("olmo3", None, "<|im_end|>", "<|pad|>", None, {}),
    "tiny-Glm4MoeForCausalLM": ("glm4_moe", "glm4moe.jinja", "<|user|>", "<|endoftext|>", None,
                                dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                     first_k_dense_replace=1, n_group=1, topk_group=1)),
    "tiny-DeepseekV3ForCausalLM": ("deepseek_v3", "deepseekv3.jinja", "<｜end▁of▁sentence｜>",
                                   "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>",
                                   dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                        first_k_dense_replace=1, n_group=1, topk_group=1, q_lora_rank=16,
                                        kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8)),
    "tiny-Lfm2ForCausalLM": ("lfm2", "lfm2.jinja", "<|im_end|>", "<|pad|>", "<|startoftext|>", {}),
    "tiny-Lfm2ForCausalLM-2.5": ("lfm2", "lfm2_2_5.jinja", "<|im_end|>", "<|pad|>", "<|startoftext|>", {}),
    "tiny-NemotronHForCausalLM-nano": ("nemotron_h", "nemotron_3_nano.jinja", "<|im_end|>", "<|pad|>", None, {}),
}
QWEN3_4B = "Qwen/Qwen3-4B"
MISTRAL_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + "
                    "' [/INST]' }}{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}"
                    "{% endfor %}")
CHATML_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                   "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=8, max_position_embeddings=2048)
TOKEN = re.compile(r"<\|[^|<>\s]+\|>|<[a-z_]+_of_turn>|<(?:bos|eos|pad|PAD|BOS_TOKEN|EOS_TOKEN)>|\[/?INST\]"
                   r"|<｜[^｜]+｜>|</?(?:think|tool_call|tool_response|s)>")
ZEN = [
    "Beautiful is better than ugly.", "Explicit is better than implicit.", "Simple is better than complex.",
    "Complex is better than complicated.", "Flat is better than nested.", "Sparse is better than dense.",
    "Readability counts.", "Special cases aren't special enough to break the rules.",
    "Although practicality beats purity.", "Errors should never pass silently.", "Unless explicitly silenced.",
    "In the face of ambiguity, refuse the temptation to guess.",
    "There should be one-- and preferably only one --obvious way to do it.",
    "Although that way may not be obvious at first unless you're Dutch.", "Now is better than never.",
    "Although never is often better than *right* now.",
    "If the implementation is hard to explain, it's a bad idea.",
    "If the implementation is easy to explain, it may be a good idea.",
    "Namespaces are one honking great idea -- let's do more of those!",
]


def build_tokenizer(template: str | None, eos: str, pad: str, bos: str | None, out: Path):
    tok = AutoTokenizer.from_pretrained(REPO / "models" / "tiny-llama")
    chat = (TEMPLATES / template).read_text() if template else None
    specials = sorted(set(TOKEN.findall(chat or "")) | {eos, pad} | ({bos} if bos else set())
                      | {"<|im_start|>", "<|im_end|>", "<|endoftext|>"})
    tok.add_tokens(specials, special_tokens=True)
    tok.eos_token, tok.pad_token = eos, pad
    if bos:
        tok.bos_token = bos
    tok.chat_template = chat or (MISTRAL_TEMPLATE if bos == "<s>" else CHATML_TEMPLATE)
    tok.save_pretrained(out)
    return tok


def build_model(name: str, out: Path) -> None:
    model_type, template, eos, pad, bos, extra = MODELS[name]
    tok = build_tokenizer(template, eos, pad, bos, out)
    config = AutoConfig.for_model(model_type, **SMALL, **extra, vocab_size=len(tok),
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                  bos_token_id=tok.bos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)


REMOTE_CONFIG = '''from transformers import LlamaConfig


class RemoteConfig(LlamaConfig):
    model_type = "remote"
'''
REMOTE_MODEL = '''from transformers import LlamaForCausalLM

from .configuration_remote import RemoteConfig


class RemoteForCausalLM(LlamaForCausalLM):
    config_class = RemoteConfig
'''


def build_remote(out: Path) -> None:
    """A model whose class lives in the repository (trust_remote_code): a Llama under another name."""
    build_model("tiny-Qwen2ForCausalLM-2.5", out)  # tokenizer and weights files to overwrite
    (out / "configuration_remote.py").write_text(REMOTE_CONFIG)
    (out / "modeling_remote.py").write_text(REMOTE_MODEL)
    qwen = json.loads((out / "config.json").read_text())
    config = AutoConfig.for_model("llama", **SMALL, vocab_size=qwen["vocab_size"], eos_token_id=qwen["eos_token_id"],
                                  pad_token_id=qwen["pad_token_id"]).to_dict()
    config.update(model_type="remote", architectures=["RemoteForCausalLM"],
                  auto_map={"AutoConfig": "configuration_remote.RemoteConfig",
                            "AutoModelForCausalLM": "modeling_remote.RemoteForCausalLM"})
    from transformers import LlamaConfig, LlamaForCausalLM
    LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k != "auto_map"})).save_pretrained(out)
    (out / "config.json").write_text(json.dumps(config, indent=1))


def _conversation(i: int, text: str) -> list[dict]:
    return [{"role": "user", "content": f"Tell me aphorism {i}."}, {"role": "assistant", "content": text}]


def zen_configs() -> dict[str, list[dict]]:
    rows = {c: [] for c in ("standard_language_modeling", "standard_prompt_completion", "standard_prompt_only",
                            "conversational_language_modeling", "conversational_prompt_completion",
                            "conversational_prompt_only", "standard_implicit_prompt_preference",
                            "standard_preference")}
    for i, line in enumerate(ZEN):
        cut = line.index(" ", len(line) // 3)
        chat = _conversation(i, line)
        rows["standard_language_modeling"].append({"text": line})
        rows["standard_prompt_completion"].append({"prompt": line[:cut], "completion": line[cut:]})
        rows["standard_prompt_only"].append({"prompt": line[:cut]})
        rows["conversational_language_modeling"].append({"messages": chat})
        rows["conversational_prompt_completion"].append({"prompt": chat[:1], "completion": chat[1:]})
        rows["conversational_prompt_only"].append({"prompt": chat[:1]})
        rows["standard_implicit_prompt_preference"].append({"chosen": line, "rejected": line[::-1]})
        rows["standard_preference"].append({"prompt": line[:cut], "chosen": line[cut:], "rejected": line[cut:][::-1]})
    return rows


def toolcall_rows() -> list[dict]:
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}},
                                                              "required": ["city"]}}}]
    out = []
    for i, city in enumerate(["Paris", "Lima", "Oslo", "Pune", "Kyiv", "Quito", "Accra", "Hanoi"]):
        out.append({"messages": [
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city}}}]},
            {"role": "tool", "name": "get_weather", "content": f"{10 + i} C"},
            {"role": "assistant", "content": f"It is {10 + i} C in {city}."}],
            "tools": json.dumps(tools)})
    return out


def harmony_rows() -> dict[str, list[dict]]:
    lm, pc = [], []
    for i, line in enumerate(ZEN):
        prompt = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": f"Aphorism {i}?"}]
        answer = [{"role": "assistant", "thinking": "Recall the Zen of Python.", "content": line}]
        lm.append({"messages": prompt + answer})
        pc.append({"prompt": prompt, "completion": answer})
    return {"language_modeling": lm, "prompt_completion": pc}


def write_dataset(root: Path, configs: dict[str, list[dict]], test_rows: int = 2) -> None:
    """One folder per config with train/test JSON Lines, declared in the README's YAML as the Hub does."""
    entries = []
    for name, rows in configs.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        splits = {"train": rows[:-test_rows], "test": rows[-test_rows:]} if test_rows else {"train": rows}
        for split, part in splits.items():
            (root / name / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        entries.append({"config_name": name, "data_files": [{"split": s, "path": f"{name}/{s}.jsonl"}
                                                            for s in splits]})
    (root / "README.md").write_text("---\n" + yaml.safe_dump({"configs": entries}) + "---\n")


def build_all(work: Path) -> str:
    """Build every stand-in that is missing under ``work``; returns a one-line summary."""
    org = work / ORG
    built, failed = [], []
    for name in [*MODELS, "tiny-RemoteForCausalLM", QWEN3_4B]:
        out = work / QWEN3_4B if name == QWEN3_4B else org / name
        if (out / ("tokenizer_config.json" if name == QWEN3_4B else "config.json")).exists():
            built.append(name)
            continue
        try:
            if name == QWEN3_4B:  # read for its chat template only (chat_template_path)
                build_tokenizer("qwen3.jinja", "<|im_end|>", "<|endoftext|>", None, out)
            elif name == "tiny-RemoteForCausalLM":
                build_remote(out)
            else:
                build_model(name, out)
            built.append(name)
        except Exception as exc:  # an architecture whose config cannot be built small: no stand-in
            failed.append(f"{name} ({type(exc).__name__}: {str(exc)[:80]})")
    write_dataset(org / "zen", zen_configs())
    write_dataset(org / "toolcall", {"language_modeling": toolcall_rows()}, test_rows=0)
    write_dataset(org / "harmony", harmony_rows())
    dolly = [{"messages": _conversation(i, line)} for i, line in enumerate(ZEN)]
    write_dataset(org / "dolly-chatml-sft", {"default": dolly}, test_rows=0)
    return f"{len(built)} models" + (f"; none for {'; '.join(failed)}" if failed else "")
