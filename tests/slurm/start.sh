#!/bin/bash
# Start a one-node SLURM cluster on loopback for the tests (as root: munged, slurmctld and slurmd).
#   start.sh WORKDIR    → WORKDIR/etc/slurm.conf, daemons' PIDs in WORKDIR/pids/
set -e
B=${1:?usage: start.sh WORKDIR}
export SLURM_CONF=$B/etc/slurm.conf
rm -rf "$B/state" "$B/spool" "$B/log"; mkdir -p "$B/etc" "$B/state" "$B/spool/slurmd-localhost" "$B/log" "$B/pids"
NODE=$(slurmd -C | head -1 | sed -E 's/^NodeName=[^ ]+/NodeName=localhost NodeAddr=127.0.0.1/')
cat > "$SLURM_CONF" <<CONF
ClusterName=testcluster
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$B/state
SlurmdSpoolDir=$B/spool/slurmd-%n
SlurmctldPidFile=$B/pids/slurmctld.pidfile
SlurmdPidFile=$B/pids/slurmd-%n.pidfile
SlurmctldLogFile=$B/log/slurmctld.log
SlurmdLogFile=$B/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MessageTimeout=10
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
MailProg=/bin/true
$NODE State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
[ -f /etc/munge/munge.key ] || { mungekey --create; chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key; }
install -d -o munge -g munge -m 0755 /run/munge
setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground >"$B/log/munged.fg" 2>&1 &
echo $! > "$B/pids/munged"
for i in $(seq 1 40); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.25; done
slurmctld -D -i >"$B/log/slurmctld.fg" 2>&1 & echo $! > "$B/pids/slurmctld"
slurmd -D -N localhost >"$B/log/slurmd.fg" 2>&1 & echo $! > "$B/pids/slurmd"
for i in $(seq 1 80); do sinfo -h -o %t 2>/dev/null | grep -qx idle && exit 0; sleep 0.25; done
echo "SLURM node did not become idle" >&2; sinfo >&2; exit 1
