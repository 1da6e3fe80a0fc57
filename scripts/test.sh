#!/usr/bin/env bash
# Runs sbnet's whole test suite on a fresh Debian machine (as root for the
# VM tests). Installs what it needs; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "sbnet: cargo not found: install Rust with rustup (https://rustup.rs) and retry" >&2
    exit 1
fi

# The two-VM tests skip themselves when they cannot run (not root, no VM
# kit); here that is a failure. SBNET_REQUIRE_VM=0 allows the skip.
export SBNET_REQUIRE_VM="${SBNET_REQUIRE_VM:-1}"

echo "== build (release)"
cargo build --release --workspace --all-targets
echo "== tests (release: the 1,000,000-packet flows run at full speed)"
cargo test --release --workspace -- --test-threads=2
echo "== micro-benchmarks, smoke mode (each benchmark once)"
cargo bench -p sbnet-device -p sbnet-tests --features sbnet-device/test-utils --bench switch --bench pmd -- --test
