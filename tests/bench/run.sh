#!/usr/bin/env bash
# sbnet's benchmark, in one command (issue 5):
#
#   tests/bench/run.sh           # the full run (about 45 minutes on 2 cores)
#   tests/bench/run.sh --quick   # short runs, sizes 64, 1500, 65536, two repeats (development)
#   tests/bench/run.sh --links-only  # only issue 12's many-links sections (links x switch
#                                    # threads, idle links; no root, no DPDK, about 4 minutes;
#                                    # writes docs/benchmarks-links.md)
#
# Any other option goes to sbnet-bench (target/release/sbnet-bench --help),
# e.g. --sizes 64,9000 --repeats 5 --no-dpdk.
#
# It installs DPDK 22.11 from Debian (testpmd, the vhost, virtio-user and
# memif PMDs), mounts hugetlbfs and reserves huge pages, builds the
# workspace, runs the criterion micro-benchmarks (host switch, PMD), then the
# end-to-end runs, and writes docs/benchmarks.md, docs/benchmarks.json and
# docs/benchmarks-{rate,gbps}.svg. The huge pages and the mount are put back
# as they were on exit. Root is needed (apt-get, sysctl, mount).
#
# Micro-benchmarks alone, as a quick smoke test (CI):
#   cargo bench -p sbnet-device -p sbnet-tests --features sbnet-device/test-utils \
#       --bench switch --bench pmd -- --test
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

QUICK=0
LINKS_ONLY=0
for a in "$@"; do
    [ "$a" = "--quick" ] && QUICK=1
    [ "$a" = "--links-only" ] && LINKS_ONLY=1
done

if [ "$LINKS_ONLY" = 1 ]; then
    # host-pair and sbnet-testpmd only: no DPDK, no huge pages, no root.
    cargo build --release -p host-pair -p sbnet-testpmd -p sbnet-bench
    exec "$ROOT/target/release/sbnet-bench" --no-dpdk --invocation "tests/bench/run.sh $*" "$@"
fi

if [ "$(id -u)" != 0 ]; then
    echo "run.sh: run as root (apt-get, huge pages, hugetlbfs mount)" >&2
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "run.sh: cargo not found: install Rust with rustup (https://rustup.rs) and retry" >&2
    exit 1
fi

say() { printf '\n== %s\n' "$*" >&2; }

# --- DPDK from Debian -------------------------------------------------------
PKGS=(dpdk dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-net-memif23)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    # Package scripts that start services (rdma-core, a dependency of
    # dpdk-dev) fail on machines without an init system unless
    # policy-rc.d denies the start; keep a working one for the install.
    POLICY=/usr/sbin/policy-rc.d
    POLICY_BACKUP=""
    if [ -e "$POLICY" ]; then
        POLICY_BACKUP=$(mktemp)
        cp -p "$POLICY" "$POLICY_BACKUP"
    fi
    restore_policy() {
        if [ -n "$POLICY_BACKUP" ]; then cp -p "$POLICY_BACKUP" "$POLICY"; rm -f "$POLICY_BACKUP"; else rm -f "$POLICY"; fi
    }
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    trap restore_policy EXIT
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; } >/tmp/sbnet-bench-apt.log 2>&1; then
        echo "run.sh: apt-get install failed (log: /tmp/sbnet-bench-apt.log); the DPDK peers will be skipped" >&2
    fi
    restore_policy
    trap - EXIT
fi

# --- huge pages (put back on exit) -----------------------------------------
HUGE=/dev/hugepages
OLD_PAGES=$(cat /proc/sys/vm/nr_hugepages)
MOUNTED=0
WANT_PAGES=2048 # 4 GiB of 2 MiB pages: three testpmds with 1 GiB each
cleanup() {
    rm -f "$HUGE"/sbnet-bench-* 2>/dev/null || true
    rm -rf /var/run/dpdk/sbnet-bench-* 2>/dev/null || true
    sysctl -q -w vm.nr_hugepages="$OLD_PAGES" >/dev/null 2>&1 || true
    if [ "$MOUNTED" = 1 ]; then umount "$HUGE" 2>/dev/null || true; fi
}
trap cleanup EXIT
if ! mountpoint -q "$HUGE" 2>/dev/null; then
    mkdir -p "$HUGE"
    mount -t hugetlbfs nodev "$HUGE" && MOUNTED=1 || echo "run.sh: cannot mount hugetlbfs on $HUGE; the DPDK peers will be skipped" >&2
fi
if [ "$OLD_PAGES" -lt "$WANT_PAGES" ]; then
    sysctl -q -w vm.nr_hugepages="$WANT_PAGES" || true
fi
say "huge pages: $(grep HugePages_Free /proc/meminfo | awk '{print $2}') free of $(cat /proc/sys/vm/nr_hugepages) (was $OLD_PAGES)"

# --- build ------------------------------------------------------------------
say "build (release)"
cargo build --release -p host-pair -p sbnet-testpmd -p sbnet-bench
cargo bench -p sbnet-device -p sbnet-tests --features sbnet-device/test-utils --bench switch --bench pmd --no-run

# --- micro-benchmarks -------------------------------------------------------
if [ "$QUICK" = 1 ]; then
    CRIT=(--warm-up-time 0.2 --measurement-time 0.5)
else
    CRIT=()
fi
say "micro-benchmarks: host switch (device-model/benches/switch.rs)"
taskset -c 1 cargo bench -p sbnet-device --features test-utils --bench switch -- "${CRIT[@]}" 2>&1 | grep -E "^[a-z_]+/|time:" >&2 || true
say "micro-benchmarks: PMD (tests/benches/pmd.rs)"
taskset -c 1 cargo bench -p sbnet-tests --bench pmd -- "${CRIT[@]}" 2>&1 | grep -E "^[a-z_]+/|time:" >&2 || true

# --- end to end -------------------------------------------------------------
say "end-to-end runs (sbnet-bench)"
"$ROOT/target/release/sbnet-bench" --invocation "tests/bench/run.sh $*" "$@"
say "done: docs/benchmarks.md"
