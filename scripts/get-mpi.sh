#!/usr/bin/env bash
# Installs what Kiln's `mpi` feature builds and runs against (docs/distributed.md): Open MPI
# (libopenmpi-dev, openmpi-bin) and libclang-dev, with which the mpi crate generates its bindings.
# Debian and Ubuntu; uses sudo when not root; does nothing when they are installed.
set -euo pipefail
need=()
for p in libopenmpi-dev openmpi-bin libclang-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
[ ${#need[@]} -eq 0 ] && exit 0
sudo=
[ "$(id -u)" -ne 0 ] && sudo=sudo
echo "installing ${need[*]} (apt)" >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
