#!/usr/bin/env bash
# Install what tests/slurm_cluster.py needs to run a real one-node Slurm cluster: Debian 12's slurm-wlm (22.05) and
# munge. Run as root on a fresh Debian 12 machine before the tests; safe to run again (it does nothing once both are
# installed). It starts no daemon and writes no Slurm/munge config: the `slurm_cluster` fixture generates its own
# slurm.conf and munge key in a temporary directory and starts munged, slurmctld and slurmd itself.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/slurm/ci_setup.sh: must run as root (apt-get install)" >&2
    exit 1
fi

need_install=0
for bin in munged slurmctld slurmd sbatch srun scontrol scancel sinfo squeue; do
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ] && [ ! -x "/usr/bin/$bin" ]; then
        need_install=1
    fi
done

if [ "$need_install" -eq 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' maintainer scripts from starting munge/slurm services during the install, where an init
    # system would honour them (the fixture runs its own daemons). Only when no policy is in place already.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    trap 'if [ "$added_policy" -eq 1 ]; then rm -f "$policy"; fi' EXIT
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurm-wlm munge
fi

# Show what the fixture will use (and fail here, not in the tests, if something is still missing).
/usr/sbin/slurmctld -V
/usr/sbin/munged --version
command -v sbatch srun scontrol scancel sinfo squeue >/dev/null
