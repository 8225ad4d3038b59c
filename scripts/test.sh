#!/usr/bin/env bash
# The test command (README; .ci/run runs it): fetches the real MiniLM weights the parity tests
# read, installs Open MPI for the distributed-training tests, then runs every test with the
# `mpi` feature on (tests/mpi.rs launches `mpirun -np 2`; all other tests run as one process).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/get-minilm.sh >/dev/null
scripts/get-mpi.sh
cargo test --workspace --features mpi
