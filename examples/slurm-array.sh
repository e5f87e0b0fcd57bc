#!/bin/sh
# examples/slurm-array.sh - one qwen3-batch worker per GPU over many nodes,
# with Slurm doing the spreading (no home-made cluster):
#
#   sbatch --array=0-7 examples/slurm-array.sh examples/slurm-job.yaml shards/
#
# Split the corpus into one input folder (or JSONL file) per array task
# beforehand, e.g. shards/0 .. shards/7. Each task runs its own job file
# derived from the template, with its own ledger, so tasks never contend.
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=08:00:00
set -e
template=$1
shards=$(realpath "$2")
task=${SLURM_ARRAY_TASK_ID:?run me with sbatch --array}
job=$(dirname "$template")/.slurm-$task.yaml
# The shard's inputs and a per-shard ledger and output.
mkdir -p "$(dirname "$template")/ledgers" "$(dirname "$template")/results"
sed -e "s|@SHARD@|$shards/$task|g" -e "s|@TASK@|$task|g" "$template" >"$job"
qwen3-batch run "$job"
