#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying and testing the submitit_slurm
# launcher (docs/cluster.md):
#
#   sudo scripts/slurm-local.sh start    # install if missing, configure, start, wait for idle
#   scripts/slurm-local.sh status        # sinfo and sacct; exit 1 if the cluster is not up
#   sudo scripts/slurm-local.sh stop     # stop the daemons this script started
#
# Debian/Ubuntu (apt-get), as root. The daemons: munged (authentication), mariadbd and
# slurmdbd (accounting, so that sacct answers: submitit asks sacct how a job ended, and
# without it a cancelled or failed job leaves the sweep command waiting for ever),
# slurmctld and slurmd (the controller and the one node). start is idempotent: a daemon
# that is running is left alone, and a MariaDB server that is already up is used, not
# started. stop stops only what start started.
#
# Files written: /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf (unless a file there
# was not written by this script: then it is kept), /etc/munge/munge.key (if missing);
# state under /var/spool/slurm-local, pids under /run/slurm-local, logs under
# /var/log/slurm-local.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin

MARK="# Written by gradbench scripts/slurm-local.sh"
STATE=/var/spool/slurm-local
RUN=/run/slurm-local
LOG=/var/log/slurm-local
STARTED=$RUN/started            # the daemons this script started, one name a line
MUNGE_PID=/run/munge/munged.pid
DB_SOCKET=/run/mysqld/mysqld.sock
DB_PID=/run/mysqld/slurm-local.pid   # where mariadbd (as user mysql) may write
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}  # how long start waits for each daemon to answer
HOST=$(hostname -s)
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)

die() { echo "slurm-local: $*" >&2; exit 1; }
say() { echo "slurm-local: $*"; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 $1): it installs packages and starts daemons"
}

install_if_missing() {
  local missing=() cmd
  for cmd in munged mariadbd slurmdbd slurmctld slurmd sbatch sinfo sacct; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  [ ${#missing[@]} -eq 0 ] && return
  command -v apt-get >/dev/null 2>&1 \
    || die "no apt-get here: install ${PACKAGES[*]} by hand (missing: ${missing[*]})"
  say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PACKAGES[@]}")
  "${apt[@]}" >"$LOG/apt.log" 2>&1 \
    || { apt-get update -q >>"$LOG/apt.log" 2>&1 && "${apt[@]}" >>"$LOG/apt.log" 2>&1; } \
    || die "apt-get install ${PACKAGES[*]} failed (see $LOG/apt.log)"
}

# ours FILE: FILE is missing or was written by this script (so it may be written again)
ours() { [ ! -e "$1" ] || grep -qF "$MARK" "$1"; }

write_conf() {
  mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d"
  if ours /etc/slurm/slurm.conf; then
    local mem
    # Slurm drains a node that has less memory than RealMemory says: claim 80% of it.
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
    cat >/etc/slurm/slurm.conf.tmp <<CONF
$MARK: a one-node cluster.
ClusterName=gradbench-local
SlurmctldHost=$HOST
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# A scheduling pass every second, not every minute: a released job starts at once.
SchedulerParameters=sched_interval=1,bf_interval=1
# Job records in slurmdbd, so that sacct tells submitit how each job ended.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
NodeName=$HOST CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
    mv /etc/slurm/slurm.conf.tmp /etc/slurm/slurm.conf
  else
    say "keeping /etc/slurm/slurm.conf (not written by this script)"
  fi
  if ours /etc/slurm/slurmdbd.conf; then
    # MariaDB's root over its Unix socket (socket authentication: slurmdbd runs as root).
    cat >/etc/slurm/slurmdbd.conf.tmp <<CONF
$MARK: accounting for the one-node cluster.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_local_acct_db
CONF
    chmod 600 /etc/slurm/slurmdbd.conf.tmp  # slurmdbd refuses a readable one
    mv /etc/slurm/slurmdbd.conf.tmp /etc/slurm/slurmdbd.conf
  else
    say "keeping /etc/slurm/slurmdbd.conf (not written by this script)"
  fi
}

munge_key() {
  [ -s /etc/munge/munge.key ] && return
  say "creating /etc/munge/munge.key"
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
}

# alive PIDFILE: the pid in the file is a running process
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# until_ok WHAT COMMAND...: run COMMAND every 0.25 s until it succeeds (at most WAIT_S)
until_ok() {
  local what=$1 deadline=$((SECONDS + WAIT_S))
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what: no answer after ${WAIT_S}s (logs in $LOG)"
    sleep 0.25
  done
}

started() { echo "$1" >>"$STARTED"; }

node_ready() {
  case "$(sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n 1)" in
    idle | mixed | allocated) return 0 ;;
  esac
  return 1
}

start() {
  mkdir -p "$RUN" "$LOG" /run/munge /run/mysqld
  install_if_missing
  write_conf
  munge_key
  chown munge:munge /run/munge
  if ! alive "$MUNGE_PID"; then
    # --force: start over the socket a killed munged left behind.
    runuser -u munge -- munged --force || die "munged did not start (see /var/log/munge/munged.log)"
    started munged
  fi
  if ! mariadb -e 'select 1' >/dev/null 2>&1; then
    touch "$LOG/mariadb.log"
    chown mysql:mysql /run/mysqld "$LOG/mariadb.log"
    # Socket only, no TCP port: nothing outside this machine reaches it.
    setsid mariadbd --user=mysql --skip-networking --socket="$DB_SOCKET" \
      --pid-file="$DB_PID" --log-error="$LOG/mariadb.log" </dev/null >/dev/null 2>&1 &
    started mariadb
    until_ok "mariadbd" mariadb -e 'select 1'
  fi
  if ! alive "$RUN/slurmdbd.pid"; then
    slurmdbd || die "slurmdbd did not start (see $LOG/slurmdbd.log)"
    started slurmdbd
  fi
  until_ok "slurmdbd" sacctmgr -n list cluster
  if ! alive "$RUN/slurmctld.pid"; then
    slurmctld || die "slurmctld did not start (see $LOG/slurmctld.log)"
    started slurmctld
  fi
  if ! alive "$RUN/slurmd.pid"; then
    slurmd || die "slurmd did not start (see $LOG/slurmd.log)"
    started slurmd
  fi
  until_ok "node $HOST idle in sinfo" node_ready
  # slurmctld registers the cluster with slurmdbd as it starts; sacct answers after that.
  until_ok "sacct" sacct -n -X -S now
  say "node $HOST is up (partition cpu, $(nproc) CPUs, accounting on)"
}

stop_pid() {  # stop_pid NAME PIDFILE
  alive "$2" || return 0
  local pid
  pid=$(cat "$2")
  kill "$pid"
  # slurmctld saves its state as it stops: seconds on a busy machine.
  for _ in $(seq 600); do
    kill -0 "$pid" 2>/dev/null || { say "stopped $1"; return; }
    sleep 0.1
  done
  die "$1 (pid $pid) did not stop in 60 s"
}

stop() {
  [ -s "$STARTED" ] || { say "nothing to stop (this script started no daemon)"; return; }
  local name
  for name in slurmd slurmctld slurmdbd mariadb munged; do
    grep -qx "$name" "$STARTED" || continue
    case $name in
      munged) stop_pid munged "$MUNGE_PID" ;;
      mariadb) stop_pid mariadbd "$DB_PID" ;;
      *) stop_pid "$name" "$RUN/$name.pid" ;;
    esac
  done
  rm -f "$STARTED"
}

status() {
  node_ready || { echo "slurm-local: no Slurm node $HOST up"; exit 1; }
  sinfo
  sacct -n -X -S now >/dev/null 2>&1 && echo "accounting: on" || echo "accounting: sacct fails"
}

case "${1:-}" in
  start) need_root start; start ;;
  stop) need_root stop; stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
