#!/usr/bin/env bash
# A real one-node Slurm (munge, slurmctld, slurmd; all state in a temporary folder, /etc
# untouched) running slurm/train.sbatch and slurm/verify.sbatch on generated data:
#   1. `sbatch --wait slurm/train.sbatch` with 2 tasks exits 0 and leaves a 2-rank model;
#   2. a job whose rank fails makes `sbatch --wait` exit non-zero;
#   3. `sbatch --wait slurm/verify.sbatch` exits 0.
# Daemons are stopped by pid on exit, also on failure. Needs root (munge, slurmd).
#   scripts/slurm_test.sh path/to/funksvd
set -euo pipefail
bin=$(realspath() { cd "$(dirname "$1")" && echo "$PWD/$(basename "$1")"; }; realspath "${1:?usage: slurm_test.sh FUNKSVD_BINARY}")
repo=$(cd "$(dirname "$0")/.." && pwd)

missing=()
for p in slurm-wlm munge libpmix-bin; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

top=$(mktemp -d /tmp/funksvd-slurm.XXXXXX)
chmod 755 "$top"
pids=()
cleanup() {
  scancel --full "--user=$(id -un)" 2>/dev/null || true
  for f in "$top"/run/slurmd.pid "$top"/run/slurmctld.pid "$top"/munge/munged.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 0.5
  for f in "$top"/run/slurmd.pid "$top"/run/slurmctld.pid "$top"/munge/munged.pid; do
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  rm -rf "$top"
}
trap cleanup EXIT

# munge: its own key, socket and files, all reachable by the munge user.
mkdir -p "$top/munge" "$top/run" "$top/spool/ctld" "$top/spool/d" "$top/log" "$top/work"
chmod 755 "$top/munge" "$top/work"
chown munge: "$top/munge"
dd if=/dev/urandom of="$top/munge/munge.key" bs=1 count=1024 status=none
chown munge: "$top/munge/munge.key"
chmod 400 "$top/munge/munge.key"
runuser -u munge -- munged --socket="$top/munge/munge.socket" --key-file="$top/munge/munge.key" \
  --pid-file="$top/munge/munged.pid" --log-file="$top/munge/munged.log" --seed-file="$top/munge/munged.seed"

host=$(hostname -s)
# Two free ports below Linux's ephemeral range (32768+), where other programs' connections
# could already hold one (a run saw slurmd fail with "Address already in use").
free_pair() {
  python3 - <<'PY'
import random, socket
for _ in range(200):
    port = random.randrange(20000, 32000)
    try:
        for p in (port, port + 1):
            with socket.socket() as s:
                s.bind(("127.0.0.1", p))
        print(port)
        break
    except OSError:
        pass
PY
}
port=$(free_pair)
export SLURM_CONF="$top/slurm.conf"
cat > "$SLURM_CONF" <<CONF
ClusterName=funksvd-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$top/munge/munge.socket
StateSaveLocation=$top/spool/ctld
SlurmdSpoolDir=$top/spool/d
SlurmctldPidFile=$top/run/slurmctld.pid
SlurmdPidFile=$top/run/slurmd.pid
SlurmctldLogFile=$top/log/slurmctld.log
SlurmdLogFile=$top/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
ReturnToService=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=2000 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
slurmctld -i
slurmd
for _ in $(seq 100); do
  [ "$(sinfo -h -o %t 2>/dev/null | head -1)" = idle ] && break
  sleep 0.2
done
[ "$(sinfo -h -o %t | head -1)" = idle ] || { cat "$top"/log/*.log; echo "slurm did not come up" >&2; exit 1; }

passed=0 failed=0
check() { # name, then a command that must succeed
  local name=$1; shift
  if "$@"; then echo "ok     $name"; passed=$((passed + 1)); else echo "FAILED $name"; failed=$((failed + 1)); fi
}

cd "$top/work"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 FUNKSVD_BIN="$bin"
"$bin" generate --out "$top/work/data" --users 300 --items 100 --events 20000 --files 2 2>/dev/null
# A credentials file as users keep it (chmod 600); nothing secret on any command line.
mkdir -p "$top/work/conf"
printf 'AWS_REGION=us-east-1\n' > "$top/work/conf/s3.env"
chmod 600 "$top/work/conf/s3.env"
export FUNKSVD_ENV_FILE="$top/work/conf/s3.env"

train_ok() {
  sbatch --wait --ntasks-per-node=2 --mem-per-cpu=500M -o "$top/work/train-%j.out" \
    "$repo/slurm/train.sbatch" --data "$top/work/data" --model "$top/work/model" --epochs 3 >/dev/null || { cat "$top"/work/train-*.out; return 1; }
  python3 -c "import json,sys; sys.exit(0 if json.load(open('$top/work/model/model.json'))['training']['ranks'] == 2 else 1)"
}
failing_rank_fails_the_job() {
  ! FUNKSVD_FAULT=epoch@1 sbatch --wait --ntasks-per-node=2 --mem-per-cpu=500M -o "$top/work/fail-%j.out" \
    "$repo/slurm/train.sbatch" --data "$top/work/data" --model "$top/work/model-bad" --epochs 3 >/dev/null \
    && grep -q "injected fault" "$top"/work/fail-*.out && [ ! -e "$top/work/model-bad/model.json" ]
}
verify_ok() {
  sbatch --wait --ntasks-per-node=2 --mem-per-cpu=500M -o "$top/work/verify-%j.out" \
    "$repo/slurm/verify.sbatch" --data "$top/work/data" >/dev/null && grep -q "all checks passed" "$top"/work/verify-*.out
}
loose_credentials_are_refused() {
  chmod 644 "$FUNKSVD_ENV_FILE"
  ! sbatch --wait --ntasks-per-node=2 --mem-per-cpu=500M -o "$top/work/loose-%j.out" \
    "$repo/slurm/verify.sbatch" >/dev/null && grep -q "chmod 600" "$top"/work/loose-*.out
  local refused=$?
  chmod 600 "$FUNKSVD_ENV_FILE"
  return $refused
}
# The time limit near: Slurm signals the batch shell (--signal=B:TERM@120), which passes SIGTERM
# to srun and srun to every rank. scancel --batch --signal=TERM does the same now.
preempted_job_checkpoints_and_resumes() {
  local id out epoch
  id=$(sbatch --parsable --ntasks-per-node=2 --mem-per-cpu=500M -o "$top/work/preempt-%j.out" \
    "$repo/slurm/train.sbatch" --data "$top/work/data" --model "$top/work/model-p" --epochs 100000)
  out="$top/work/preempt-$id.out"
  for _ in $(seq 600); do grep -q "epoch 5/100000" "$out" 2>/dev/null && break; sleep 0.1; done
  scancel --batch --signal=TERM "$id"
  for _ in $(seq 600); do [ -n "$(squeue -h -j "$id" 2>/dev/null)" ] || break; sleep 0.1; done
  epoch=$(sed -n 's/.*interrupted (SIGTERM) after epoch \([0-9]*\) of 100000.*/\1/p' "$out")
  [ -n "$epoch" ] || { cat "$out"; return 1; }
  sbatch --wait --ntasks-per-node=2 --mem-per-cpu=500M -o "$top/work/resumed-%j.out" \
    "$repo/slurm/train.sbatch" --data "$top/work/data" --model "$top/work/model-p" \
    --epochs $((epoch + 1)) --resume >/dev/null || { cat "$top"/work/resumed-*.out; return 1; }
  grep -q "resuming after epoch $epoch" "$top"/work/resumed-*.out
}
check "sbatch --wait train.sbatch with 2 tasks leaves a 2-rank model" train_ok
check "SIGTERM before the time limit checkpoints; --resume finishes the job" preempted_job_checkpoints_and_resumes
check "a failing rank makes sbatch --wait exit non-zero" failing_rank_fails_the_job
check "sbatch --wait verify.sbatch passes" verify_ok
check "a credentials file readable by others is refused" loose_credentials_are_refused
echo "slurm: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
