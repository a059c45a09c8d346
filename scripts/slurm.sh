#!/usr/bin/env bash
# A single-node Slurm on this machine for the cluster tests (`make slurm-up` / `make slurm-down`).
#
#   scripts/slurm.sh up      install slurm-wlm + munge if missing (Debian, root), write a localhost slurm.conf,
#                            start munged, slurmctld and slurmd, wait until the node is idle; nothing if already up
#   scripts/slurm.sh down    stop what `up` started (by the pids it recorded), nothing else
#   scripts/slurm.sh status  say whether it is up
#
# Everything lives under $HFPIPE_SLURM_DIR (default /var/lib/hfpipe-slurm): state, spool, logs, pid files. The
# config is /etc/slurm/slurm.conf (where sbatch/squeue look) and carries a marker line; a slurm.conf without the
# marker (a real cluster's) is never overwritten. One partition, `debug`, holds this machine's CPUs. No accounting
# daemon: hfpipe learns a job's fate from squeue / scontrol.
set -euo pipefail

DIR=${HFPIPE_SLURM_DIR:-/var/lib/hfpipe-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by hfpipe scripts/slurm.sh"
HOST=$(hostname -s)

say() { echo "slurm: $*"; }
die() { echo "slurm: error: $*" >&2; exit 1; }

is_up() {  # the controller answers and our node is idle/mixed/allocated (not down/drained)
    [ -f "$CONF" ] && timeout 5 sinfo -h -n "$HOST" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
    [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed, and installing them needs root"
    command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed (no apt-get to install them)"
    say "apt-get install slurm-wlm munge"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >"$DIR/apt.log" 2>&1 \
        || die "apt-get install slurm-wlm munge failed; see $DIR/apt.log"
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script: not touching a real cluster's config"
    fi
    local cpus mem
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    mkdir -p /etc/slurm "$DIR/state" "$DIR/spool" "$DIR/log"
    cat >"$CONF.tmp" <<EOF
$MARK (single node, localhost; safe to delete with \`scripts/slurm.sh down\`)
ClusterName=hfpipe
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
# a test cluster: schedule every few seconds, not every minute (a dependent array pass otherwise waits up to 60 s)
SchedulerParameters=sched_interval=2,bf_interval=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
KillWait=5
MinJobAge=600
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    if timeout 5 munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0  # a munged is already running (ours or the system's): use it
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    munged --force --pid-file="$DIR/munged.pid" || die "munged did not start"
    for _ in $(seq 50); do
        timeout 5 munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munge does not answer (munge -n | unmunge)"
}

up() {
    mkdir -p "$DIR"
    if is_up; then say "already up ($HOST, partition debug)"; return 0; fi
    install
    write_conf
    start_munge
    alive "$DIR/slurmctld.pid" || slurmctld || die "slurmctld did not start; see $DIR/log/slurmctld.log"
    alive "$DIR/slurmd.pid" || slurmd || die "slurmd did not start; see $DIR/log/slurmd.log"
    for _ in $(seq 60); do
        if is_up; then say "up: node $HOST ($(nproc) CPUs), partition debug"; return 0; fi
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
        sleep 0.5
    done
    die "node $HOST did not become idle within 30 s; see $DIR/log/slurmctld.log and slurmd.log"
}

down() {
    local stopped=0 name f
    for name in slurmd slurmctld munged; do
        f="$DIR/$name.pid"
        if alive "$f"; then
            kill "$(cat "$f")"
            for _ in $(seq 50); do alive "$f" || break; sleep 0.1; done
            alive "$f" && kill -9 "$(cat "$f")"
            stopped=1
        fi
        rm -f "$f"
    done
    [ "$stopped" = 1 ] && say "down" || say "nothing of ours was running"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) if is_up; then say "up"; else say "down"; exit 1; fi ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
