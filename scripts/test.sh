#!/usr/bin/env bash
# The test command (README): every test of the workspace — unit tests, the
# protocol crate's spec/proptest suites, and the black-box tests in tests/ that
# start the real `corecast` binary and a real Apache Kafka broker (KRaft, from
# Maven Central, cached under target/kafka-dist; needs java 17+ and mvn).
#
# Debug profile on purpose: on a 2-core box a release (thin-LTO) build of the
# whole workspace costs more than the tests gain from it. Tests never assert
# timings, so the profile does not change what they check.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
exec cargo test --workspace --no-fail-fast "$@"
