#!/usr/bin/env bash
# sbnet's main job on its embedded default: host-pair and two PMD processes
# (host-process mode, no VM), traffic both ways and a 1,000,000-frame
# one-way flow, then a summary of what was delivered and copied.
# Extra arguments go to sbnet-demo (see: target/release/sbnet-demo --help).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "sbnet: cargo not found: install Rust with rustup (https://rustup.rs) and retry" >&2
    exit 1
fi
echo "building (release)..." >&2
cargo build --release --quiet -p host-pair -p sbnet-testpmd --bins
exec ./target/release/sbnet-demo "$@"
