#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md in one go, on one CUDA machine, results under $1 (default
# docs/benchmarks). Each step has its own time limit, so one that stalls leaves the others' results.
#   bash benchmarks/run_on_gpu.sh [OUT] [part]     # part: checks | loss | train | all (default)
set -u
out=${1:-docs/benchmarks}; part=${2:-all}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch, transformers, trl, peft, datasets; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__, torch.cuda.get_device_name())" || exit 1
if [[ $part == all || $part == checks ]]; then
  timeout 150 python3 benchmarks/gpu_checks.py --out "$out" 2>&1 | tail -n 60
fi
if [[ $part == all || $part == loss ]]; then
  timeout 200 python3 benchmarks/loss_head.py --vocab 32000 --tokens 8192 --hidden 4096 --repeats 3 \
      --memory-vs-tokens 4096 16384 --out "$out" --tag loss_head_cuda_v32000
  timeout 170 python3 benchmarks/loss_head.py --vocab 128256 --tokens 8192 --hidden 4096 --repeats 3 \
      --variants trl_fused trl_ls naive ual_paper ual_paper_compiled ual_uniform_compiled ual_paper_sample floor \
      --out "$out" --tag loss_head_cuda_v128256
fi
if [[ $part == all || $part == train ]]; then
  timeout 280 python3 benchmarks/train_throughput.py --hidden 512 --steps 20 --rounds 2 --out "$out"
fi
