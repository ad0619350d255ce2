"""The paper's token-clustering analysis (docs/paper.md): do a model's final hidden states group by the token
they predict? Label smoothing is expected to tighten these clusters.

For each model: run it over held-out text, take the input of ``lm_head`` at every position and label it
with the next token; keep the K most frequent next tokens (special tokens excluded: they mark structure,
not language); for every pair of them, project the pair's states to 2-D with PCA and compute the
silhouette score. A model is summarised by the mean over all pairs and the distribution; on request also by
the UAL authors' selection of pairs (``authors_selection``), labelled as a selection.

Data settings: ``alpacaeval`` (default) reads any ``ual.formats`` file, by default the AlpacaEval instructions
with their reference answers; ``paper`` reads the prompts of a LIMA-format file alone (``conversations``: a list
of strings, the first one the prompt), in the authors' LIMA prompt format, as their analysis did.
"""

from __future__ import annotations

import csv
import gc
import itertools
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ual.eval import data, outputs, plots, protocols
from ual.errors import UsageError
from ual.eval.generate import read_chat_template
from ual.eval.models import ModelSpec, check_adapter_path, check_model_path, load_model, model_record
from ual.formats import convert, detect_format

PLAIN_ROLES = {"user": "User", "assistant": "Assistant", "system": "System"}
DATA_SETTINGS = ("alpacaeval", "paper")
AUTHORS_SELECTION_PAIRS = 100


class _Captured(Exception):
    """Raised by the lm_head hook once its input is captured, to end the forward pass there."""


@dataclass
class ClusteringSettings:
    num_tokens: int = 42
    max_samples: int = 300
    max_length: int = 512
    max_per_token: int = 1000
    batch_size: int = 8
    seed: int = 0
    plain: bool = False
    data_setting: str = "alpacaeval"  # alpacaeval | paper

    def __post_init__(self):
        if self.data_setting not in DATA_SETTINGS:
            raise UsageError(f"--data-setting {self.data_setting!r}: choose one of {', '.join(DATA_SETTINGS)}")
        for name in ("num_tokens", "max_samples", "max_length", "max_per_token", "batch_size"):
            if getattr(self, name) < (2 if name in ("num_tokens", "max_per_token", "max_length") else 1):
                raise UsageError(f"--{name.replace('_', '-')} is too small: {getattr(self, name)}")


@dataclass(frozen=True)
class PairScore:
    token_a: int
    token_b: int
    n_a: int
    n_b: int
    silhouette: float


def held_out_items(rows: list[dict], source: str) -> list[str | list[dict]]:
    """Each row as a conversation (any shape ``ual.formats`` knows) or, for ``text`` rows, a string."""
    items = []
    for i, row in enumerate(rows):
        fmt = detect_format(row.keys())
        if fmt is None:
            raise UsageError(
                f"held-out data {source!r}: row {i} (0-based) has columns {sorted(row)}; expected text, messages, "
                "conversations, prompt/completion, instruction/output, question/answer or query/response"
            )
        out = convert(row, fmt)
        if "text" in out:
            items.append(out["text"])
        elif "messages" in out:
            items.append(list(out["messages"]))
        elif isinstance(out["prompt"], str):
            items.append(out["prompt"] + out["completion"])
        else:
            items.append(list(out["prompt"]) + list(out["completion"]))
    return items


def lima_prompt_items(rows: list[dict], source: str) -> list[str]:
    """The ``paper`` setting: each row's prompt alone (the first string of ``conversations``), in the authors'
    LIMA prompt format; a row's response, if it has one, is not read."""
    items = []
    for i, row in enumerate(rows):
        turns_ = row.get("conversations")
        if not isinstance(turns_, list) or not turns_ or not isinstance(turns_[0], str):
            raise UsageError(f"held-out data {source!r}: row {i} (0-based) has no 'conversations' list of strings; "
                             "--data-setting paper reads LIMA-format rows (GAIR/lima's test.jsonl)")
        items.append(protocols.paper_lima_prompt(turns_[0]))
    return items


def authors_selection(analyses: list[dict], ls: str, ual: str, k: int = AUTHORS_SELECTION_PAIRS) -> dict:
    """The UAL authors' pair selection (their ``pca_cherry.py``): over the token pairs every model has, pairs whose
    mean silhouette across the models is negative get 1e-9 for the ratio, the ``k`` pairs with the largest
    UAL/LS ratio are kept, and each model's mean over those pairs is reported. A selection favouring UAL over LS
    by construction: not the mean over all pairs."""
    labels = [a["spec"].label for a in analyses]
    for name in (ls, ual):
        if name not in labels:
            raise UsageError(f"--authors-selection: no model labelled {name!r} (models: {', '.join(labels)})")
    per_model = [{(a["text"][s.token_a], a["text"][s.token_b]): s.silhouette for s in a["scores"]} for a in analyses]
    common = sorted(set.intersection(*(set(m) for m in per_model)))
    values = np.array([[m[pair] for pair in common] for m in per_model], dtype=float)
    keep = np.isfinite(values).all(axis=0)
    common, values = [p for p, ok in zip(common, keep) if ok], values[:, keep]
    if not common:
        raise UsageError("--authors-selection: the models share no token pair with finite silhouettes")
    raw = values.copy()
    raw[:, raw.mean(axis=0) < 0] = 1e-9
    ratio = raw[labels.index(ual)] / raw[labels.index(ls)]
    chosen = np.argsort(ratio, kind="stable")[::-1][:k]
    return {"selection": f"the UAL authors' selection: the {len(chosen)} pairs with the largest {ual}/{ls} "
                         "silhouette ratio (pca_cherry.py), NOT the mean over all pairs",
            "ls": ls, "ual": ual, "pairs_common": len(common), "pairs_selected": int(len(chosen)),
            "mean": {label: float(values[i, chosen].mean()) for i, label in enumerate(labels)},
            "mean_all_pairs": {label: float(values[i].mean()) for i, label in enumerate(labels)}}


def render(items: list, tokenizer, chat_template: str | None, plain: bool, where: str) -> list[str]:
    """Conversations as text: the model's chat template, ``--chat-template``, or with ``--plain`` the
    authors' ``### User: ... ### Assistant: ...`` layout (the same text for every model, templates or not)."""
    texts = []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
        elif plain:
            texts.append("".join(f"### {PLAIN_ROLES.get(m['role'], m['role'])}: {m['content']}\n" for m in item))
        else:
            if chat_template is None and not getattr(tokenizer, "chat_template", None):
                raise UsageError(f"{where} has no chat template; pass --chat-template FILE or --plain")
            texts.append(tokenizer.apply_chat_template(item, chat_template=chat_template, tokenize=False))
    return texts


def tokenize(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text, truncated; texts rendered by a chat template already hold their BOS."""
    ids = []
    for text in texts:
        add = tokenizer.bos_token is None or not text.startswith(tokenizer.bos_token)
        ids.append(tokenizer(text, add_special_tokens=add, truncation=True, max_length=max_length)["input_ids"])
    return ids


def next_token_positions(seqs: list[list[int]], exclude: set[int]) -> dict[int, list[tuple[int, int]]]:
    """token id -> every (sequence, position) whose NEXT token is that id."""
    where: dict[int, list[tuple[int, int]]] = {}
    for s, ids in enumerate(seqs):
        for p in range(len(ids) - 1):
            target = ids[p + 1]
            if target not in exclude:
                where.setdefault(target, []).append((s, p))
    return where


def top_tokens(positions: dict[int, list], k: int) -> list[int]:
    """The k most frequent next tokens with at least 2 occurrences (ties: lower id first)."""
    ranked = sorted((t for t, p in positions.items() if len(p) >= 2), key=lambda t: (-len(positions[t]), t))
    return ranked[:k]


def subsample(positions: dict[int, list], tokens: list[int], max_per_token: int, seed: int) -> dict[int, list[tuple[int, int]]]:
    """At most ``max_per_token`` positions per token, drawn without replacement (silhouette is O(n^2))."""
    rng = np.random.default_rng(seed)
    chosen = {}
    for t in tokens:
        pos = positions[t]
        if len(pos) > max_per_token:
            keep = np.sort(rng.choice(len(pos), size=max_per_token, replace=False))
            pos = [pos[i] for i in keep]
        chosen[t] = pos
    return chosen


@torch.inference_mode()
def collect_features(model, seqs: list[list[int]], chosen: dict[int, list[tuple[int, int]]], pad_id: int, batch_size: int, *, progress: bool = True, desc: str = "hidden states") -> dict[int, np.ndarray]:
    """The input of ``lm_head`` at every chosen position, by a forward hook (so what is read is exactly what
    the output layer sees: after the final norm, for any architecture, and through a PEFT wrapper)."""
    needed: dict[int, list[tuple[int, int]]] = {}
    for t, pos in chosen.items():
        for s, p in pos:
            needed.setdefault(s, []).append((p, t))
    order = sorted(needed)
    captured = []

    def grab(module, args):
        captured.append(args[0].detach())
        raise _Captured  # the logits are not needed: skip the vocabulary-sized matmul and its memory

    handle = model.get_output_embeddings().register_forward_pre_hook(grab)
    device = next(model.parameters()).device
    feats: dict[int, list[np.ndarray]] = {t: [] for t in chosen}
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            batch = order[start : start + batch_size]
            width = max(len(seqs[s]) for s in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, s in enumerate(batch):
                ids[row, : len(seqs[s])] = torch.tensor(seqs[s])
                mask[row, : len(seqs[s])] = 1
            captured.clear()
            try:
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            except _Captured:
                pass
            if not captured:
                raise RuntimeError(f"{type(model).__name__} never called its output embeddings (lm_head)")
            hidden = captured[-1].float().cpu()
            for row, s in enumerate(batch):
                for p, t in needed[s]:
                    feats[t].append(hidden[row, p].numpy())
    finally:
        handle.remove()
    return {t: np.stack(v) for t, v in feats.items()}


def pair_scores(features: dict[int, np.ndarray], seed: int, *, progress: bool = True, desc: str = "pairs") -> tuple[list[PairScore], dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]]:
    """Silhouette of every token pair after a 2-D PCA fitted on that pair alone; also the 2-D points of
    each pair (kept so the figure can show the pair that separates best without a second forward pass)."""
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    tokens = list(features)
    scores, points = [], {}
    pairs = list(itertools.combinations(tokens, 2))
    for a, b in tqdm(pairs, desc=desc, disable=not progress):
        x = np.concatenate([features[a], features[b]]).astype(np.float64)
        is_b = np.r_[np.zeros(len(features[a]), bool), np.ones(len(features[b]), bool)]
        z = PCA(n_components=2, random_state=seed).fit_transform(x)
        s = float(silhouette_score(z, is_b)) if np.ptp(z, axis=0).max() > 0 else float("nan")
        scores.append(PairScore(a, b, len(features[a]), len(features[b]), s))
        points[(a, b)] = (z.astype(np.float32), is_b)
    return scores, points


def summarize(values: list[float]) -> dict:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if not len(v):
        return {"num_pairs": 0, "mean": float("nan")}
    q = np.quantile(v, [0.25, 0.5, 0.75])
    return {"num_pairs": len(v), "mean": v.mean(), "std": v.std(), "min": v.min(), "q25": q[0], "median": q[1], "q75": q[2], "max": v.max()}


def _token_text(tokenizer, t: int) -> str:
    return tokenizer.decode([t])


def analyze_model(spec: ModelSpec, items: list, settings: ClusteringSettings, *, chat_template: str | None, dtype: str, device: str, progress: bool) -> dict:
    """Everything one model contributes: its top tokens, every pair's score and 2-D points."""
    model, tokenizer = load_model(spec, dtype=dtype, device=device)
    texts = render(items, tokenizer, chat_template, settings.plain, where=f"--model {spec.model!r}")
    seqs = tokenize(tokenizer, texts, settings.max_length)
    positions = next_token_positions(seqs, set(tokenizer.all_special_ids))
    tokens = top_tokens(positions, settings.num_tokens)
    if len(tokens) < 2:
        raise UsageError(f"{spec.label}: the held-out text has fewer than 2 distinct next tokens seen twice")
    if len(tokens) < settings.num_tokens:
        print(f"warning: {spec.label}: only {len(tokens)} tokens occur twice or more (asked for "
              f"{settings.num_tokens})", file=sys.stderr)
    chosen = subsample(positions, tokens, settings.max_per_token, settings.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    feats = collect_features(model, seqs, chosen, pad, settings.batch_size, progress=progress, desc=f"{spec.label}: hidden states")
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    scores, points = pair_scores(feats, settings.seed, progress=progress, desc=f"{spec.label}: pairs")
    return {
        "spec": spec,
        "tokens": [(t, _token_text(tokenizer, t), len(positions[t]), len(chosen[t])) for t in tokens],
        "text": {t: _token_text(tokenizer, t) for t in tokens},
        "scores": scores,
        "points": points,
        "num_sequences": len(seqs),
        "num_positions": sum(len(s) - 1 for s in seqs),
        "hidden_size": int(next(iter(feats.values())).shape[1]),
    }


def best_pair(analyses: list[dict]) -> tuple[str, str] | None:
    """The pair (by token text, so models with different tokenizers still match) with the highest mean
    silhouette over the models that all have it."""
    per_model = []
    for a in analyses:
        per_model.append({(a["text"][s.token_a], a["text"][s.token_b]): s.silhouette for s in a["scores"] if math.isfinite(s.silhouette)})
    common = set.intersection(*(set(m) for m in per_model)) if per_model else set()
    if not common:
        return None
    return max(sorted(common), key=lambda k: np.mean([m[k] for m in per_model]))


def _write_csvs(tmp: Path, analyses: list[dict]) -> None:
    with (tmp / "pairs.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["model", "token_a", "token_b", "text_a", "text_b", "n_a", "n_b", "silhouette"])
        for a in analyses:
            for s in a["scores"]:
                w.writerow([a["spec"].label, s.token_a, s.token_b, a["text"][s.token_a], a["text"][s.token_b], s.n_a, s.n_b, f"{s.silhouette:.6f}"])
    with (tmp / "tokens.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["model", "rank", "token_id", "text", "occurrences", "used"])
        for a in analyses:
            for rank, (t, text, count, used) in enumerate(a["tokens"], start=1):
                w.writerow([a["spec"].label, rank, t, text, count, used])
    keys = ["model", "num_tokens", "num_pairs", "mean", "std", "min", "q25", "median", "q75", "max"]
    with (tmp / "summary.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for a in analyses:
            summ = {"model": a["spec"].label, "num_tokens": len(a["tokens"]), **summarize([s.silhouette for s in a["scores"]])}
            w.writerow([f"{summ[k]:.6f}" if isinstance(summ.get(k), float) else summ.get(k, "") for k in keys])


def run(specs: list[ModelSpec], settings: ClusteringSettings, *, data_source: str | None, output_dir: str, overwrite: bool = False, chat_template: str | None = None, dtype: str = "auto", device: str = "auto", progress: bool = True, command: list[str] | None = None, selection: tuple[str, str] | None = None) -> Path:
    """Analyse every model; write summary/pairs/tokens CSVs, the box plot, the best pair's scatter,
    settings.json and results.json into ``output_dir`` at once."""
    if not specs:
        raise UsageError("give at least one --model")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"two models share a label ({labels}); name them with --model NAME=PATH")
    for spec in specs:
        check_model_path(spec.model)
        if spec.adapter:
            check_adapter_path(spec.adapter)
    paper = settings.data_setting == "paper"
    if paper and data_source is None:
        raise UsageError("--data-setting paper needs --data: a LIMA-format file with the 300 test prompts (GAIR/lima's "
                         "test.jsonl; see docs/eval.md)")
    if paper and (chat_template is not None or settings.plain):
        raise UsageError("--data-setting paper writes the authors' LIMA prompt format; drop --chat-template/--plain")
    if selection is not None:
        missing = [name for name in selection if name not in labels]
        if missing:
            raise UsageError(f"--authors-selection: no model labelled {missing[0]!r} (models: {', '.join(labels)})")
    template = read_chat_template(chat_template)
    out = outputs.check_output_dir(output_dir, overwrite)
    data_source = data_source or str(data.ALPACA_EVAL)
    rows = data.load_rows(data_source, split="test")[: settings.max_samples]
    if not rows:
        raise UsageError(f"held-out data {data_source!r} has no rows")
    items = lima_prompt_items(rows, data_source) if paper else held_out_items(rows, data_source)
    started = outputs.now()

    analyses = [
        analyze_model(spec, items, settings, chat_template=template, dtype=dtype, device=device, progress=progress)
        for spec in specs
    ]
    pair = best_pair(analyses)
    results = {"task": "clustering", "name": "clustering", "best_pair": list(pair) if pair else None, "models": []}
    if selection is not None:
        results["authors_selection"] = authors_selection(analyses, *selection)
    for a in analyses:
        results["models"].append({
            **model_record(a["spec"]),
            "silhouette": summarize([s.silhouette for s in a["scores"]]),
            "tokens": [{"id": t, "text": text, "occurrences": c, "used": u} for t, text, c, u in a["tokens"]],
            "num_sequences": a["num_sequences"],
            "num_positions": a["num_positions"],
            "hidden_size": a["hidden_size"],
        })
    settings_json = {
        "task": "clustering",
        "command": command,
        "models": [model_record(s) for s in specs],
        "data": {**data.describe_source(data_source), "rows_used": len(rows)},
        "render": ("the authors' LIMA prompt, prompts only: " + repr(protocols.paper_lima_prompt("{prompt}"))
                   if paper else "plain '### User: ... ### Assistant: ...'" if settings.plain
                   else {"chat_template": chat_template or "model"}),
        "first_text": items[0] if isinstance(items[0], str) else None,
        **asdict(settings),
        "pca": "sklearn PCA(n_components=2) fitted on each pair's states alone",
        "silhouette": "sklearn silhouette_score (euclidean) on the 2-D projection, labels = next token",
        "excluded_targets": "special tokens of each tokenizer",
        "dtype": dtype,
        "device": device,
        "versions": outputs.versions(),
        "started_at": started,
        "finished_at": outputs.now(),
    }
    with outputs.AtomicDir(out, overwrite) as tmp:
        _write_csvs(tmp, analyses)
        plots.silhouette_boxplot({a["spec"].label: [s.silhouette for s in a["scores"]] for a in analyses}, tmp / "silhouette_boxplot.png", num_tokens=settings.num_tokens)
        if pair is not None:
            panels = []
            for a in analyses:
                by_text = {(a["text"][s.token_a], a["text"][s.token_b]): s for s in a["scores"]}
                s = by_text[pair]
                pts, is_b = a["points"][(s.token_a, s.token_b)]
                panels.append({"label": a["spec"].label, "points": pts, "is_b": is_b, "silhouette": s.silhouette})
            plots.pair_scatter(panels, tmp / "best_pair_scatter.png", token_a=pair[0], token_b=pair[1])
        outputs.write_json(tmp / outputs.RESULTS, results)
        outputs.write_json(tmp / outputs.SETTINGS, settings_json)
    return out
