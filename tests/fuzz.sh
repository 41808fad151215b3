#!/usr/bin/env bash
# Fuzzes the decoders that read bytes from the network, each for a bounded time:
#   peer_frame        replication::Frame::decode (and the records inside batches)
#   resp_parser       api::resp::codec::Parser, whole and split input
#   peer_certificate  security::CertIdentity::from_der (peer identity from a certificate)
#
# Usage: tests/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 300 s, every target)
#
# Needs a nightly toolchain and cargo-fuzz (installed here when missing). Not part of
# tests/run.sh nor CI: run it by hand. The corpus is kept in node/fuzz/corpus/<target>
# between runs; a crash is written to node/fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail

seconds="${1:-300}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(peer_frame resp_parser peer_certificate)
fi

cd "$(dirname "$0")/../node/fuzz"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: a nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

jobs=1
status=0
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "== $target: ${seconds}s"
    # -rss_limit_mb bounds memory; -max_len keeps inputs near frame sizes worth trying.
    if ! cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -jobs="$jobs" -workers="$jobs" \
        -print_final_stats=1 2>&1 | tee "/tmp/geocache-fuzz-$target.log" | grep -E '^(#[0-9]+ +DONE|Done|==|stat::|SUMMARY|.*panicked)'; then
        :
    fi
    if grep -qE 'SUMMARY|panicked|deadly signal' "/tmp/geocache-fuzz-$target.log"; then
        echo "fuzz.sh: $target FAILED; see /tmp/geocache-fuzz-$target.log and artifacts/$target/" >&2
        status=1
    else
        echo "fuzz.sh: $target passed ($(grep -oE 'stat::number_of_executed_units: [0-9]+' "/tmp/geocache-fuzz-$target.log" | awk '{print $2}') runs)"
    fi
done
exit $status
