#!/usr/bin/env bash
# Entry point of every pod of a GPU training job (a Kubernetes Indexed Job, one pod per node). Every pod runs
# torchrun as node JOB_COMPLETION_INDEX of MUGV_NNODES, meeting at pod 0 through the headless service
# mugv-torchrun (static rendezvous: node 0 holds global rank 0).
#   pod 0:      the Prefect flow run ("$@", the worker's command): flows/train_job.py:train_stage_flow pulls the
#               stage's inputs, launches `torchrun --node-rank 0`, then commits and pushes the outputs.
#   pods 1..N-1: `python -m flows.train_job node` execs the same torchrun line with their own node rank.
# MUGV_HOME is the repository working copy on the volume every pod shares (outputs of every rank land there).
set -euo pipefail
export MUGV_RDZV_ENDPOINT="${MUGV_RDZV_ENDPOINT:-${MUGV_JOB_NAME:?}-0.mugv-torchrun:${MUGV_RDZV_PORT:-29500}}"
export MUGV_RDZV_ID="${MUGV_RDZV_ID:-${MUGV_JOB_NAME}}"
cd "${MUGV_HOME:?MUGV_HOME must name the shared repository working copy}"
if [ "${JOB_COMPLETION_INDEX:-0}" = "0" ]; then
  exec "$@"
fi
exec python -m flows.train_job node
