#!/usr/bin/env bash
# A real single-node SLURM on this machine, for `make test-slurm`: munged, slurmctld and
# slurmd on localhost, CPUs only, config and state under $SLURM_TEST_DIR (default
# /tmp/symgrad-slurm). The config is $SLURM_TEST_DIR/slurm.conf, not /etc/slurm: clients
# find it through SLURM_CONF (the Makefile exports it), and a SLURM already configured on
# this host is left alone. `down` stops only the daemons this script started (pid files).
#   tests/slurm/cluster.sh up     install slurm-wlm and munge if missing, start the daemons
#   tests/slurm/cluster.sh down   stop them
# Needs root (apt-get, munged). Idempotent: `up` on a running cluster only checks it.
set -euo pipefail
DIR=${SLURM_TEST_DIR:-/tmp/symgrad-slurm}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)

running() { [ -s "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

down() {
  for daemon in slurmd slurmctld; do
    if running "$daemon"; then kill "$(cat "$DIR/$daemon.pid")"; fi
  done
  for _ in $(seq 20); do running slurmd || running slurmctld || break; sleep 0.5; done
}

up() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge (Debian packages)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
  fi
  mkdir -p "$DIR"/{state,spool,log} /run/munge /var/log/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1k count=1 2>/dev/null; }
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
  cat > "$CONF" <<CONF
# Written by symgrad's tests/slurm/cluster.sh: a one-node test cluster, no cgroups, no GPUs.
ClusterName=symgrad-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=600
KillWait=10
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  # munge is checked by use, not by process name: a munged that is shutting down still
  # shows in pgrep. When it had to be (re)started, so are the SLURM daemons that need it.
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    pkill -x munged || true
    for _ in $(seq 20); do pgrep -x munged >/dev/null || break; sleep 0.5; done
    munged --force 2>>"$DIR/log/munged.err"
    for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
    down
  fi
  running slurmctld || slurmctld -f "$CONF"
  running slurmd || slurmd -f "$CONF"
  export SLURM_CONF=$CONF
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qxE '(idle|mixed|allocated)'; then  # no '*': slurmd answers
      echo "slurm is up: $(sinfo -h -o '%P %D %c %T')"
      return 0
    fi
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "slurm did not come up; see $DIR/log" >&2
  sinfo >&2 || true
  tail -n 20 "$DIR"/log/*.log >&2 || true
  return 1
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
