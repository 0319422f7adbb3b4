# A two-node Slurm on this host for the tests (sourced, root only): a scratch config in $work
# (SLURM_CONF must point into it), controller and node daemons on free loopback ports.
#   slurm_start WORK CLUSTER_NAME KILL_WAIT_S   writes the config, starts the daemons, waits
#                                               for both nodes idle (calls `fail` otherwise)
#   slurm_stop WORK                             stops the daemons by their pid files (TERM, then KILL)

slurm_stop() {
  local work="$1" f
  for f in "$work"/slurmd-n1.pid "$work"/slurmd-n2.pid "$work"/slurmctld.pid; do
    [ -f "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null
  done
  for f in "$work"/slurmd-n1.pid "$work"/slurmd-n2.pid "$work"/slurmctld.pid; do
    for _ in $(seq 40); do [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null || break; sleep 0.1; done
    [ -f "$f" ] && kill -KILL "$(cat "$f")" 2>/dev/null
  done
}

slurm_start() {
  local work="$1" name="$2" kill_wait="$3" ctld_port n1_port n2_port host idle
  # Free ports for the controller and the two node daemons (the kernel picks, we release them).
  read -r ctld_port n1_port n2_port < <(python3 -c '
import socket
s=[socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
  host=$(hostname)
  mkdir -p "$work/state" "$work/spool"
  cat > "$SLURM_CONF" <<CONF
ClusterName=$name
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$n1_port
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool/%n
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd-%n.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd-%n.log
JobRequeue=1
KillWait=$kill_wait
InactiveLimit=0
MinJobAge=30
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$n1_port CPUs=2 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$n2_port CPUs=2 State=UNKNOWN
PartitionName=test Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  slurmctld -c -f "$SLURM_CONF" || fail "slurmctld did not start"
  slurmd -f "$SLURM_CONF" -N n1 || fail "slurmd n1 did not start"
  slurmd -f "$SLURM_CONF" -N n2 || fail "slurmd n2 did not start"
  idle=0
  for _ in $(seq 100); do
    idle=$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l)
    [ "$idle" -eq 2 ] && break
    sleep 0.2
  done
  [ "$idle" -eq 2 ] || { sinfo -N 2>&1; fail "the two nodes did not come up idle"; }
}
