#!/usr/bin/env bash
# The fast Table 1 on one CUDA GPU: the MLP on the paper profile, ResNet, RK-Net and ODE-Net on the
# fast profile in bf16-mixed, seed 0; rows (cuda_peak_mib filled, precision recorded, float32 without
# TF32 where precision=32) go to $RESULTS/table1.csv, and `noderun table` renders them.
#
#   bash benchmarks/gpu_table1.sh                                   # on the GPU machine
#   PROFILE=smoke DEVICE=cpu RESULTS=/tmp/check bash benchmarks/gpu_table1.sh   # check the script on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-fast}
DEVICE=${DEVICE:-cuda}
RESULTS=${RESULTS:-results}
SEEDS=${SEEDS:-0}
PRECISION=${PRECISION:-bf16-mixed}
NODERUN=${NODERUN:-.venv/bin/noderun}
MLP_PROFILE=$([ "$PROFILE" = fast ] && echo paper || echo "$PROFILE")
common=(device="$DEVICE" results_dir="$RESULTS" seed="$SEEDS" profile.progress=false)

"$(dirname "$NODERUN")/python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
"$NODERUN" train -m model=mlp profile="$MLP_PROFILE" "${common[@]}"
"$NODERUN" train -m model=resnet,rknet,odenet profile="$PROFILE" precision="$PRECISION" "${common[@]}"
"$NODERUN" table results_dir="$RESULTS"
