# Shared by train.sbatch and verify.sbatch (sourced; needs bash).
#
# - the binary: $FUNKSVD_BIN, else `funksvd` on PATH;
# - credentials: a chmod-600 env file, $FUNKSVD_ENV_FILE (default ~/.config/funksvd/s3.env),
#   with lines such as AWS_ENDPOINT_URL=... AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...;
#   never on the command line or in this script (`scontrol show job` and `ps` show those);
# - ranks: srun --mpi=pmix --kill-on-bad-exit=1, so one failing rank ends the step.

if command -v module >/dev/null 2>&1; then
  module load openmpi 2>/dev/null || true
fi
# Since Slurm 22.05 srun does not inherit --cpus-per-task.
export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
# A rank not heard from for this long (a node down, cut off or frozen) is named and the job
# stops (funksvd --stall-timeout; heartbeats are UDP between the nodes). Slurm's own node checks
# (SlurmdTimeout) end the step for a node that is gone.
export FUNKSVD_STALL_TIMEOUT=${FUNKSVD_STALL_TIMEOUT:-60}
# One core per rank: no library may start its own thread pool.
export OMP_NUM_THREADS=$SRUN_CPUS_PER_TASK OPENBLAS_NUM_THREADS=1

env_file=${FUNKSVD_ENV_FILE:-$HOME/.config/funksvd/s3.env}
if [ -f "$env_file" ]; then
  mode=$(stat -c %a "$env_file")
  if [ "$mode" != 600 ] && [ "$mode" != 400 ]; then
    echo "funksvd: $env_file holds credentials but has mode $mode; run: chmod 600 $env_file" >&2
    exit 2
  fi
  set -a
  # shellcheck disable=SC1090
  . "$env_file"
  set +a
fi

bin=${FUNKSVD_BIN:-$(command -v funksvd || true)}
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "funksvd: binary not found; set FUNKSVD_BIN or put funksvd on PATH" >&2
  exit 2
fi

# Run `funksvd COMMAND ARGS...` on every task of the allocation. The batch shell gets SIGTERM
# 120 s before the time limit (--signal=B:TERM@120) and passes it on to the ranks themselves
# (scancel --signal signals the job's steps): each finishes its epoch, they checkpoint and exit
# 143; `--resume` continues. (srun, sent SIGTERM, would kill the ranks at once.)
run_ranks() {
  echo "funksvd: job ${SLURM_JOB_ID:-?}: ${SLURM_NTASKS:-?} ranks on ${SLURM_JOB_NUM_NODES:-?} nodes ($bin $1)"
  srun --mpi=pmix --kill-on-bad-exit=1 "$bin" "$@" &
  local pid=$! status
  trap 'echo "funksvd: time limit near, stopping the ranks at the end of their epoch" >&2
        scancel --signal=TERM "${SLURM_JOB_ID:-0}" 2>/dev/null || kill -TERM "$pid" 2>/dev/null' TERM
  while true; do
    set +e
    wait "$pid"
    status=$?
    set -e
    kill -0 "$pid" 2>/dev/null || break
  done
  exit "$status"
}
