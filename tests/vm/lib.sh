# shellcheck shell=bash
# Set-up shared by the two-VM harnesses (run-stock-pair.sh, run-pmd-pair.sh).
# Sourced, not run. Provides: REPO, VM_DIR, ROOT, ACCEL, TOTAL_TIMEOUT,
# GUEST_TIMEOUT, now, say, setup_error, vm_preflight, vm_kit, vm_host_pair
# (sets HP), vm_run_dir NAME (sets RUN and IN_RUN, installs the cleanup
# trap that stops PIDS and HP_PID), strip_ansi and vm_fail_tails (the QEMU
# and host-pair parts of a failure report).

LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$LIB_DIR/../.." && pwd)"
VM_DIR="${SBNET_VM_DIR:-/var/cache/sbnet-vm}"
ROOT="$VM_DIR/root"
ACCEL="${SBNET_VM_ACCEL:-tcg}"
TOTAL_TIMEOUT="${SBNET_VM_TIMEOUT:-300}"
GUEST_TIMEOUT=$((TOTAL_TIMEOUT - 20))
[ "$GUEST_TIMEOUT" -ge 30 ] || GUEST_TIMEOUT=30

T0=$(date +%s.%N)
now() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
say() { printf '[%6ss] %s\n' "$(now)" "$*"; }
setup_error() { say "setup error: $*"; echo "SBNET-VM-TEST: FAIL setup: $*"; exit 2; }
strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }

# Root and a known accelerator.
vm_preflight() {
    [ "$(id -u)" = 0 ] || setup_error "must run as root (chroot, unshare and QEMU need it)"
    case "$ACCEL" in tcg|kvm) ;; *) setup_error "SBNET_VM_ACCEL must be tcg or kvm, got '$ACCEL'";; esac
}

# Builds or checks the kit and loads its kit.env. $1: what the log line says first.
vm_kit() {
    say "${1:+$1: }building/checking the VM kit in $VM_DIR"
    local kit_t0
    kit_t0=$(now)
    "$LIB_DIR/build-kit.sh" || setup_error "tests/vm/build-kit.sh failed (see above)"
    say "kit ready ($(awk -v a="$kit_t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s)"
    # shellcheck disable=SC1091
    . "$ROOT/sbnet/kit/kit.env"
}

# HP: $SBNET_HOST_PAIR, or the release build (built if missing).
vm_host_pair() {
    HP="${SBNET_HOST_PAIR:-}"
    if [ -z "$HP" ]; then
        HP="${CARGO_TARGET_DIR:-$REPO/target}/release/host-pair"
        if [ ! -x "$HP" ]; then
            say "building host-pair (cargo build --release -p host-pair)"
            (cd "$REPO" && cargo build --release -p host-pair) || setup_error "cargo build --release -p host-pair failed"
        fi
    fi
    [ -x "$HP" ] || setup_error "host-pair binary $HP not found or not executable"
}

PIDS=()
HP_PID=
vm_cleanup() {
    local p
    for p in "${PIDS[@]}" $HP_PID; do kill -TERM "$p" 2>/dev/null; done
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local alive=0
        for p in "${PIDS[@]}" $HP_PID; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.2
    done
    for p in "${PIDS[@]}" $HP_PID; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ "${KEEP_RUN:-0}" = 1 ] || [ "${SBNET_VM_KEEP:-0}" = 1 ]; then
        echo "run directory kept: $RUN"
    else
        rm -rf "$RUN"
    fi
}

# A fresh run directory inside the root (RUN on the host, IN_RUN as QEMU
# sees it), removed on exit unless a failure keeps it.
vm_run_dir() {
    mkdir -p "$ROOT/sbnet/run"
    RUN=$(mktemp -d "$ROOT/sbnet/run/$1.XXXXXX") || setup_error "cannot create a run directory in $ROOT/sbnet/run"
    IN_RUN="/sbnet/run/${RUN##*/}"
    say "run directory $RUN"
    trap vm_cleanup EXIT
    trap 'say "interrupted"; exit 1' INT TERM
}

# The QEMU and host-pair tails of a failure report.
vm_fail_tails() {
    local f
    for f in "$RUN"/qemu-a.log "$RUN"/qemu-b.log; do
        [ -s "$f" ] || continue
        echo "----- last 15 lines of ${f##*/} (QEMU stderr) -----"
        tail -n 15 "$f"
    done
    if [ -f "$RUN/host-pair.log" ]; then
        echo "----- last 30 lines of host-pair.log -----"
        tail -n 30 "$RUN/host-pair.log" | strip_ansi
    fi
    [ -f "$RUN/stats.json" ] && { echo "----- host-pair stats.json -----"; cat "$RUN/stats.json"; echo; }
}
