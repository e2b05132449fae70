#!/bin/bash
# A suite on TPU VM slices: on every worker of each slice, the same suite command (docs/suite.md).
#
#   WORKDIR=gs://BUCKET/suite DATA_DIR=gs://BUCKET/tensorflow_datasets ZONE=us-central2-b \
#     scripts/launch/tpu_suite.sh SLICE [SLICE ...] [-- extra suite flags]
#
# Each slice trains one run at a time with all its chips: `--suite.distributed=True` makes every
# worker call jax.distributed.initialize(), worker 0 claims the run and broadcasts it, and all
# workers train it together; then the next run. Slices split the runs through the claims in
# WORKDIR; the slice that finishes the last run writes the report. The command runs detached
# (nohup) on the workers, logging to ~/suite.log; rerun the script after a preemption.
# SUITE (default suites/imagenot_study:published), REPO_DIR (the checkout on the
# workers, default imagenot_jax), STAGGER_S (seconds between slices, default 10).
set -euo pipefail

SUITE=${SUITE:-suites/imagenot_study:published}
WORKDIR=${WORKDIR:?set WORKDIR to a gs:// suite directory}
DATA_DIR=${DATA_DIR:?set DATA_DIR to a gs:// TFDS data dir}
ZONE=${ZONE:?set ZONE to the slices zone}
REPO_DIR=${REPO_DIR:-imagenot_jax}

slices=()
while (($# > 0)) && [[ $1 != -- ]]; do
  slices+=("$1")
  shift
done
if (($# > 0)); then
  shift  # the --
fi
if ((${#slices[@]} == 0)); then
  echo "usage: $0 SLICE [SLICE ...] [-- extra suite flags]" >&2
  exit 2
fi

printf -v extra ' %q' "$@"
if (($# == 0)); then
  extra=""
fi
printf -v suite_cmd 'cd %q && nohup python3 -m imagenot_jax.suite --suite=%q --workdir=%q --data_dir=%q --suite.distributed=True%s > ~/suite.log 2>&1 < /dev/null &' \
  "$REPO_DIR" "$SUITE" "$WORKDIR" "$DATA_DIR" "$extra"

for slice in "${slices[@]}"; do
  echo "$slice: $suite_cmd"
  gcloud compute tpus tpu-vm ssh "$slice" --zone="$ZONE" --worker=all --command="$suite_cmd"
  sleep "${STAGGER_S:-10}"
done
