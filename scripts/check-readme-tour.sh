#!/usr/bin/env bash
# Runs the README as a newcomer would: a fresh clone of this repository (committed work only),
# the build command of "Set up a fresh machine", then every ```sh block of "A tour of the
# commands" pasted in order into one shell that stops at the first failure. Prints each
# command with the seconds it took. About 45 minutes on 2 cores.
#   usage: scripts/check-readme-tour.sh [CLONE_DIR]   (default: ../kiln-tour-check, beside this
#          repository, so the tour's ../shared/data resolves as in the checkout)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
clone=${1:-$repo/../kiln-tour-check}
rm -rf "$clone"
git clone --quiet "$repo" "$clone"
cd "$clone"
cargo build --release 2>&1 | tail -1
# The tour's shell blocks, in order.
# (PS4 is set inside: bash does not take it from the environment when running as root.)
{
  echo "PS4='+ [\$(date +%s)] '; set -x"
  awk '/^## A tour of the commands/{on=1} /^## Speed/{on=0}
       on && /^```sh$/{code=1; next} on && /^```$/{code=0; next} code' README.md
} > tour.sh
rm -rf /tmp/kiln-tour
bash -eu -o pipefail tour.sh 2> tour.log > tour.out || {
  tail -30 tour.log
  echo "README tour FAILED in $clone (log: $clone/tour.log)"
  exit 1
}
# Seconds between consecutive commands: each traced command with the time it took.
awk '/^\+ \[[0-9]+\] /{t=substr($2,2,length($2)-2); if (prev!="") printf "%5ds  %s\n", t-pt, prev;
     prev=substr($0, index($0,"] ")+2); pt=t}
     END{"date +%s" | getline now; printf "%5ds  %s\n", now-pt, prev}' tour.log | cut -c1-150
echo "README tour passed in $clone"
