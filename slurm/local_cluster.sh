#!/usr/bin/env bash
# A private Slurm cluster on loopback, for development and CI (not for real runs).
#
#   slurm/local_cluster.sh start    # munged + slurmctld + 4 slurmd ("nodes" n1..n4), waits until idle
#   eval "$(slurm/local_cluster.sh env)"   # SLURM_CONF and the sacct wrapper on PATH for clients
#   slurm/local_cluster.sh status   # daemons, sinfo, squeue
#   slurm/local_cluster.sh stop     # cancel jobs, stop the daemons (each with a timeout)
#
# Every command is idempotent: `start` on a running cluster only reports it, `stop` on a
# stopped one does nothing. Needs root and Debian's packages `munge slurmctld slurmd
# slurm-client` (.ci/run installs them; this script installs nothing).
#
# Layout: everything lives under $PRORL_SLURM_DIR (default /tmp/prorl-slurm): its own munge
# key and munged socket (the host's /run/munge is never touched), slurm.conf, state, spool,
# logs, pid files, and bin/sacct. Ports come from $PRORL_SLURM_PORT (default derived from the
# directory's name, so two clusters in two directories do not collide).
#
# Why each setting (measured on a 2-core Debian 12 container, Slurm 22.05, ../../shared/FIELD_NOTES.md):
# - several slurmd on 127.0.0.1, each started with `-N nX` and its own Port, give a multi-node
#   cluster on one machine; the node names must resolve, so they are added to /etc/hosts.
# - no cgroups or systemd: proctrack/linuxproc and task/none.
# - no slurmdbd: `sacct` then fails and submitit's job.result() can wait forever for a job that
#   died without a result; bin/sacct answers from squeue (live jobs) and the jobcomp/filetxt
#   log (finished jobs) instead.
# - AuthInfo cred_expire=10: a requeued job is held until its old credential expires (120 s
#   by default), which would make every requeue test wait two minutes.
# - FirstJobId from the clock: state is wiped at every start, and ids restarting at 1 would
#   make stale submitit folders match new jobs.
set -euo pipefail

DIR="${PRORL_SLURM_DIR:-/tmp/prorl-slurm}"
NODES=(n1 n2 n3 n4)
CPUS_PER_NODE="${PRORL_SLURM_CPUS:-2}"   # oversubscribes a 2-core machine 4x: fine for tests
PARTITION=debug
WAIT_S="${PRORL_SLURM_WAIT_S:-60}"       # timeout for every wait in this script
CLUSTER=prorl

CONF="$DIR/etc/slurm.conf"
MUNGE_SOCK="$DIR/munge/munge.socket"
conf_port() { sed -n 's/^SlurmctldPort=//p' "$CONF" 2>/dev/null; }
if [[ -n "${PRORL_SLURM_PORT:-}" ]]; then
    PORT_BASE="$PRORL_SLURM_PORT"
else
    # 10000..19990 in steps of 10: slurmctld on +0, slurmd n1..n4 on +1..+4. Below 20000, where
    # submitit's TorchDistributedEnvironment and train.py pick MASTER_PORTs, and below the
    # kernel's ephemeral range (32768+).
    PORT_BASE=$(( 10000 + ( $(printf '%s' "$DIR" | cksum | cut -d' ' -f1) % 1000 ) * 10 ))
fi

log() { printf '[local_cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pid_alive() {  # pid_alive FILE NAME -> FILE holds the pid of a live process called NAME
    # (the name check keeps a stale pid file from pointing us at an unrelated, reused pid)
    [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null && [[ $(cat "/proc/$(cat "$1")/comm" 2>/dev/null) == "$2" ]]
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND... -> polls COMMAND until it succeeds
    local secs="$1" what="$2"; shift 2
    local deadline=$(( SECONDS + secs ))
    until "$@" >/dev/null 2>&1; do
        (( SECONDS < deadline )) || { log "timed out after ${secs}s waiting for $what"; return 1; }
        sleep 0.5
    done
}

client_env() {  # the variables a Slurm client (sbatch, squeue, submitit) needs
    printf 'export SLURM_CONF=%q\n' "$CONF"
    printf 'export PATH=%q:"$PATH"\n' "$DIR/bin"
}

check_binaries() {
    local missing=()
    for b in munged mungekey slurmctld slurmd sinfo squeue sbatch scancel scontrol; do
        command -v "$b" >/dev/null || missing+=("$b")
    done
    (( ${#missing[@]} == 0 )) || die "missing ${missing[*]}: apt-get install -y munge slurmctld slurmd slurm-client"
    [[ $(id -u) == 0 ]] || die "must run as root (slurmd starts jobs as their submitting user)"
}

write_hosts() {
    local n
    for n in "${NODES[@]}"; do
        getent hosts "$n" >/dev/null || { echo "127.0.0.1 $n  # prorl local_cluster.sh" >> /etc/hosts; log "added $n to /etc/hosts"; }
    done
}

write_config() {
    mkdir -p "$DIR"/{etc,munge,state,spool,log,run,bin}
    chmod 755 "$DIR/munge"  # clients of any uid reach the socket; the key stays 0400
    # munged refuses a key readable by others.
    [[ -s "$DIR/munge/munge.key" ]] || mungekey --create --keyfile="$DIR/munge/munge.key" --bits=1024
    chmod 400 "$DIR/munge/munge.key"

    # Blocks of 60 ids per minute since the epoch, below Slurm's default MaxJobId (67043328).
    local first_job_id=$(( 1000 + ( $(date +%s) / 60 % 1000000 ) * 60 ))
    local mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / ${#NODES[@]} ))
    {
        echo "# Written by slurm/local_cluster.sh; overwritten at every start."
        echo "ClusterName=$CLUSTER"
        echo "SlurmctldHost=$(hostname -s)(127.0.0.1)"
        echo "SlurmctldPort=$PORT_BASE"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "CredType=cred/munge"
        echo "AuthInfo=socket=$MUNGE_SOCK,cred_expire=10"
        echo "StateSaveLocation=$DIR/state"
        echo "SlurmdSpoolDir=$DIR/spool/%n"
        echo "SlurmctldPidFile=$DIR/run/slurmctld.pid"
        echo "SlurmdPidFile=$DIR/run/slurmd-%n.pid"
        echo "SlurmctldLogFile=$DIR/log/slurmctld.log"
        echo "SlurmdLogFile=$DIR/log/slurmd-%n.log"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_CPU"
        echo "SwitchType=switch/none"
        echo "MpiDefault=none"
        echo "AccountingStorageType=accounting_storage/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "JobCompType=jobcomp/filetxt"
        echo "JobCompLoc=$DIR/log/jobcomp.txt"
        echo "MailProg=/bin/true"
        echo "FirstJobId=$first_job_id"
        # Only matters where preemption is configured (not here): send the job's --signal
        # (submitit: USR2) at preemption, not just SIGTERM, which submitit ignores.
        echo "SlurmctldParameters=preempt_send_user_signal"
        # Report the configured CPUs/memory even where the machine has fewer (CI runners).
        echo "SlurmdParameters=config_overrides"
        # A requeued job is held until its old credential expires, then waits for the next
        # scheduler pass: 30 s (backfill) by default, 2 s here.
        echo "SchedulerParameters=bf_interval=2,sched_interval=2"
        echo "ReturnToService=2"
        echo "KillWait=5"          # SIGTERM -> SIGKILL on cancel / time limit (default 30 s)
        echo "MinJobAge=300"       # finished jobs stay visible to squeue (and bin/sacct) 5 min
        echo "InactiveLimit=0"
        echo "SlurmdTimeout=60"
        echo "MessageTimeout=10"
        local i=1 n
        for n in "${NODES[@]}"; do
            echo "NodeName=$n NodeAddr=127.0.0.1 NodeHostname=$n Port=$(( PORT_BASE + i )) CPUs=$CPUS_PER_NODE RealMemory=$mem_mb State=UNKNOWN"
            i=$(( i + 1 ))
        done
        echo "PartitionName=$PARTITION Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
    } > "$CONF"
    for n in "${NODES[@]}"; do mkdir -p "$DIR/spool/$n"; done
    touch "$DIR/log/jobcomp.txt"

    # sacct without slurmdbd: live jobs from squeue, finished ones from the jobcomp log.
    # Answers the query submitit makes (sacct -o JobID,State,NodeList --parsable2 -j ID ...);
    # other queries fall through to `sacct --completion`.
    cat > "$DIR/bin/sacct" <<EOF
#!/usr/bin/env bash
# Written by slurm/local_cluster.sh: sacct for a cluster without slurmdbd.
export SLURM_CONF=\${SLURM_CONF:-$CONF}
ids=() fmt="" parsable=0 args=("\$@")
while (( \$# )); do
    case "\$1" in
        -j|--jobs) ids+=("\$2"); shift ;;
        -j*) ids+=("\${1#-j}") ;;
        --jobs=*) ids+=("\${1#--jobs=}") ;;
        -o|--format) fmt="\$2"; shift ;;
        --format=*) fmt="\${1#--format=}" ;;
        -p|--parsable|--parsable2|-P) parsable=1 ;;
    esac
    shift
done
if [[ "\$fmt" != "JobID,State,NodeList" || \$parsable == 0 || \${#ids[@]} == 0 ]]; then
    exec /usr/bin/sacct --completion "\${args[@]}"
fi
ids_csv=\$(IFS=,; echo "\${ids[*]}")
echo "JobID|State|NodeList"
# Finished runs first, live state last: submitit keeps the last line per id, and a requeued
# job has a finished record (REQUEUED / NODE_FAIL ...) from its earlier run.
/usr/bin/sacct --completion -n -P -o JobID,State,NodeList -j "\$ids_csv" 2>/dev/null | awk -F'|' 'NF>=2 {print \$1"|"\$2"|"\$3}'
/usr/bin/squeue -h -t all -j "\$ids_csv" -o '%i|%T|%N' 2>/dev/null || true
EOF
    chmod 755 "$DIR/bin/sacct"
}

munged_up()    { pid_alive "$DIR/run/munged.pid" munged; }
slurmctld_up() { pid_alive "$DIR/run/slurmctld.pid" slurmctld; }
slurmd_up()    { pid_alive "$DIR/run/slurmd-$1.pid" slurmd; }
all_idle() {   # every node answers and is idle (not down / drained / unknown)
    local states
    states=$(SLURM_CONF="$CONF" sinfo -h -N -p "$PARTITION" -o '%N %t' 2>/dev/null) || return 1
    [[ $(grep -c . <<<"$states") == "${#NODES[@]}" ]] && ! grep -qvE ' (idle|alloc|mix)$' <<<"$states"
}
daemons_up() {
    munged_up && slurmctld_up || return 1
    local n; for n in "${NODES[@]}"; do slurmd_up "$n" || return 1; done
}

start() {
    check_binaries
    if daemons_up && all_idle; then
        log "already running in $DIR (slurmctld port $(conf_port))"
        status_short
        return 0
    fi
    if munged_up || slurmctld_up || pgrep_any_slurmd; then
        log "partly running: restarting cleanly"
        stop
    fi
    write_hosts
    write_config
    local t0=$SECONDS

    munged --socket="$MUNGE_SOCK" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/run/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" --force
    wait_for "$WAIT_S" munged munge_ok || die "munged did not answer; see $DIR/log/munged.log"

    # -c: start from empty state (ids still advance: FirstJobId comes from the clock).
    slurmctld -c -f "$CONF"
    wait_for "$WAIT_S" slurmctld env SLURM_CONF="$CONF" scontrol ping || die "slurmctld did not answer; see $DIR/log/slurmctld.log"

    local n
    for n in "${NODES[@]}"; do
        slurmd -f "$CONF" -N "$n" -L "$DIR/log/slurmd-$n.log"
    done
    wait_for "$WAIT_S" "${#NODES[@]} idle nodes" all_idle || { SLURM_CONF="$CONF" sinfo -N -l >&2 || true; die "nodes not idle; see $DIR/log/"; }
    log "up in $(( SECONDS - t0 ))s: ${#NODES[@]} nodes x $CPUS_PER_NODE CPUs, partition $PARTITION, slurmctld port $PORT_BASE, dir $DIR"
    log "clients need: eval \"\$($0 env)\""
}

munge_ok() { munge -S "$MUNGE_SOCK" -n </dev/null | unmunge -S "$MUNGE_SOCK"; }
pgrep_any_slurmd() {
    local n; for n in "${NODES[@]}"; do slurmd_up "$n" && return 0; done; return 1
}

stop_pidfile() {  # stop_pidfile NAME FILE: SIGTERM, wait, then SIGKILL
    local name="$1" file="$2" pid deadline
    pid_alive "$file" "${name%% *}" || { rm -f "$file"; return 0; }
    pid=$(cat "$file")
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(( SECONDS + WAIT_S ))
    while kill -0 "$pid" 2>/dev/null; do
        if (( SECONDS >= deadline )); then log "$name ($pid) ignored SIGTERM for ${WAIT_S}s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; break; fi
        sleep 0.2
    done
    rm -f "$file"
}

stop() {
    local n
    if slurmctld_up && munged_up; then
        # Drain jobs first: a slurmstepd whose slurmd is gone outlives it (FIELD_NOTES).
        local jobs
        jobs=$(SLURM_CONF="$CONF" squeue -h -o %i 2>/dev/null || true)
        [[ -z "$jobs" ]] || { log "cancelling jobs: $(echo $jobs)"; SLURM_CONF="$CONF" scancel $jobs 2>/dev/null || true; }
        wait_for "$WAIT_S" "jobs to end" no_jobs || log "jobs still listed; stopping anyway"
    fi
    for n in "${NODES[@]}"; do stop_pidfile "slurmd $n" "$DIR/run/slurmd-$n.pid"; done
    kill_stray_stepds
    stop_pidfile slurmctld "$DIR/run/slurmctld.pid"
    stop_pidfile munged "$DIR/run/munged.pid"
    log "stopped ($DIR)"
}

no_jobs() { [[ -z $(SLURM_CONF="$CONF" squeue -h -t PD,R,CG,S,CF,RQ -o %i 2>/dev/null) ]]; }

kill_stray_stepds() {  # slurmstepd processes of this cluster: they hold our log files open
    local pid
    for pid in $(pgrep -x slurmstepd 2>/dev/null || true); do
        if ls -l "/proc/$pid/fd" 2>/dev/null | grep -qF "$DIR/"; then
            log "killing stray slurmstepd $pid and its processes"
            pkill -KILL -P "$pid" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

status_short() {
    SLURM_CONF="$CONF" sinfo -N -o '%N %P %t %c' 2>&1 | sed 's/^/  /' >&2 || true
}

status() {
    local n ok=0
    printf 'dir %s  slurmctld port %s\n' "$DIR" "$(conf_port)"
    munged_up && echo "munged     up ($(cat "$DIR/run/munged.pid"))" || { echo "munged     down"; ok=1; }
    slurmctld_up && echo "slurmctld  up ($(cat "$DIR/run/slurmctld.pid"))" || { echo "slurmctld  down"; ok=1; }
    for n in "${NODES[@]}"; do
        slurmd_up "$n" && echo "slurmd $n  up ($(cat "$DIR/run/slurmd-$n.pid"))" || { echo "slurmd $n  down"; ok=1; }
    done
    if (( ok == 0 )); then
        SLURM_CONF="$CONF" sinfo -N -o '%N %P %t %c' || ok=1
        SLURM_CONF="$CONF" squeue || true
    fi
    return $ok
}

case "${1:-}" in
    start)  start ;;
    stop)   stop ;;
    status) status ;;
    env)    client_env ;;
    restart) stop; start ;;
    *) echo "usage: $0 start|stop|status|env|restart   (dir: \$PRORL_SLURM_DIR=$DIR)" >&2; exit 2 ;;
esac
