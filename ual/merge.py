"""``ual merge ADAPTER_DIR --output DIR``: a LoRA run's adapter folded into its base model, saved as a plain model.

PEFT's ``merge_and_unload`` does the arithmetic; this adds what a UAL run carries: the tokenizer and chat template
the adapter was saved with, ``ual_smoothing.json`` and the model card. The base is loaded in full precision (never
4-bit): merging into quantised weights would round the adapter away, so a pre-quantised base is refused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .errors import UsageError, debug_requested, report
from .eval.models import ModelSpec, load_model
from .eval.outputs import AtomicDir, check_output_dir
from .run_folder import SETTINGS_FILE


def merge(adapter: str, output: str, *, dtype: str = "auto", overwrite: bool = False) -> Path:
    """Merge ``adapter`` into the base its ``adapter_config.json`` names; returns the output folder."""
    folder = Path(adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise UsageError(f"{adapter!r} is not a PEFT adapter folder: no adapter_config.json")
    check_output_dir(output, overwrite)
    spec = ModelSpec.of(str(folder))
    base_config = Path(spec.model).expanduser() / "config.json"
    if base_config.is_file() and "quantization_config" in json.loads(base_config.read_text()):
        raise UsageError(f"the base {spec.model!r} is stored quantised; merge into its full-precision original "
                         "(a QLoRA adapter merges into the bf16 base it was quantised from)")
    model, tokenizer = load_model(spec, dtype=dtype, device="cpu")
    merged = model.merge_and_unload()
    with AtomicDir(output, overwrite) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)  # the adapter's own tokenizer and chat template when it saved them
        for name in (SETTINGS_FILE, "README.md"):
            if (folder / name).is_file():
                shutil.copy2(folder / name, tmp / name)
        card = tmp / "README.md"
        note = (f"\n\nMerged with `ual merge` from the adapter `{folder}` into its base `{spec.model}` "
                "(PEFT `merge_and_unload`).\n")
        card.write_text((card.read_text(encoding="utf-8") if card.is_file() else f"# {Path(output).name}") + note,
                        encoding="utf-8")
    return Path(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ual merge", description=__doc__.splitlines()[0])
    parser.add_argument("adapter", help="a LoRA adapter folder written by `ual train` (use_peft)")
    parser.add_argument("--output", "-o", required=True, help="where to write the merged model (a new folder)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights dtype (auto: bfloat16 on a GPU, float32 on a CPU)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    try:
        out = merge(args.adapter, args.output, dtype=args.dtype, overwrite=args.overwrite)
    except UsageError as err:
        if debug_requested():
            raise
        return report("ual merge", err)
    print(f"merged model, tokenizer, {SETTINGS_FILE} and card in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
