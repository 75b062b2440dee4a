#!/bin/bash
# Stop everything start.sh started, by PID; jobs first (slurmstepd outlives slurmd).
B=${1:?usage: stop.sh WORKDIR}
export SLURM_CONF=$B/etc/slurm.conf
squeue -h -o %i 2>/dev/null | xargs -r scancel
for i in $(seq 1 40); do [ -z "$(squeue -h -o %i -t PD,R,CG,S 2>/dev/null)" ] && break; sleep 0.25; done
for f in slurmd slurmctld munged; do
  [ -f "$B/pids/$f" ] || continue; p=$(cat "$B/pids/$f")
  kill -TERM "$p" 2>/dev/null
  for i in $(seq 1 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$p" 2>/dev/null && kill -KILL "$p"
  rm -f "$B/pids/$f"
done
