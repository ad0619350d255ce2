"""Copy the small real-data sample the tiny recipe trains on, scored by the documented prior.

Run once from the repo root with the project's shared data beside it:
    python scripts/make_sample_data.py ../shared/data data/sample
Rows are taken in file order (the first N), so the sample is reproducible; licences are copied along.
"""

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path

from ual.prior import PRIOR_METHOD, prior_uncertainty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shared_data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    gsm8k = [json.loads(line) for line in (args.shared_data / "gsm8k/train.jsonl").read_text().splitlines()]
    alpaca = json.loads((args.shared_data / "alpaca/alpaca_5000.json").read_text())
    for name, rows, source in (("gsm8k_train", gsm8k, "gsm8k"), ("alpaca", alpaca, "alpaca")):
        rows = rows[: args.rows]
        with open(args.out / f"{name}_{args.rows}.jsonl", "w") as f:
            for row in rows:
                scored = {**row, "uncertainty": prior_uncertainty(row, source), "uncertainty_method": PRIOR_METHOD}
                f.write(json.dumps(scored, ensure_ascii=False) + "\n")
        print(name, len(rows), Counter(prior_uncertainty(r, source) for r in rows))
    shutil.copy(args.shared_data / "gsm8k/LICENSE-MIT.txt", args.out / "LICENSE-GSM8K-MIT.txt")
    shutil.copy(args.shared_data / "alpaca/LICENSE-CC-BY-NC-4.0.txt", args.out / "LICENSE-ALPACA-CC-BY-NC-4.0.txt")


if __name__ == "__main__":
    main()
