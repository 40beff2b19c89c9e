#!/usr/bin/env bash
# Entry point of every pod of a GPU training job (an Indexed Kubernetes Job, one pod per node).
# Pod 0 runs the Prefect flow run, whose stage launches `torchrun --node-rank 0`; the other pods
# join the same c10d rendezvous directly. MUGV_TRAIN_ARGS is the stage's `mugv` argument list.
set -euo pipefail
rank="${JOB_COMPLETION_INDEX:-0}"
# pod 0 of the Indexed Job, reachable through the headless service mugv-torchrun
export MUGV_RDZV_HOST="${MUGV_RDZV_HOST:-${MUGV_JOB_NAME}-0.mugv-torchrun}"
if [ "$rank" = "0" ]; then
  exec python -m prefect.engine
fi
exec torchrun \
  --nnodes "${MUGV_NNODES}" --nproc-per-node "${MUGV_GPUS_PER_NODE}" --node-rank "$rank" \
  --rdzv-backend c10d --rdzv-endpoint "${MUGV_RDZV_HOST}:${MUGV_RDZV_PORT:-29500}" --rdzv-id "${MUGV_RDZV_ID}" \
  -m mugv.cli ${MUGV_TRAIN_ARGS}
