# shellcheck shell=bash
# Set-up shared by the two-VM harnesses (run-stock-pair.sh, run-pmd-pair.sh).
# Sourced, not run. Provides: REPO, VM_DIR, ROOT, ACCEL, TOTAL_TIMEOUT,
# GUEST_TIMEOUT, now, say, setup_error, vm_unavailable, vm_preflight,
# vm_check_numbers, vm_kit, vm_host_pair
# (sets HP), vm_run_dir NAME (sets RUN and IN_RUN, installs the cleanup
# trap that stops PIDS and HP_PID), strip_ansi, vm_fail_tails (the QEMU
# and host-pair parts of a failure report), vm_fail, and for the run itself:
# vm_start_host_pair, vm_qemu, vm_wait_guests, vm_show_new, vm_stop_host_pair,
# result_of, result_field, vm_check_result, hp_counter, vm_show_counters,
# vm_check_no_refusals.
# The harness defines `fail REASON` (its verdict on a failure, exit 1);
# the run functions call it.

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
# The VMs cannot run on this machine (not root, no kit): exit status 3, which
# the cargo tests report as a skip unless SBNET_REQUIRE_VM=1.
vm_unavailable() { say "cannot run here: $*"; echo "SBNET-VM-TEST: SKIP $*"; exit 3; }
strip_ansi() { sed 's/\x1b\[[0-9;]*m//g'; }

# Root and a known accelerator.
vm_preflight() {
    [ "$(id -u)" = 0 ] || vm_unavailable "must run as root (chroot, unshare and QEMU need it)"
    case "$ACCEL" in tcg|kvm) ;; *) setup_error "SBNET_VM_ACCEL must be tcg or kvm, got '$ACCEL'";; esac
}

# vm_check_numbers VAR...: each VAR holds a decimal number (else a setup error).
vm_check_numbers() {
    local v
    for v in "$@"; do
        case "${!v}" in ''|*[!0-9]*) setup_error "$v must be a number, got '${!v}'";; esac
    done
}

# Builds or checks the kit and loads its kit.env. $1: what the log line says
# first; further arguments go to build-kit.sh (--dpdk).
vm_kit() {
    say "${1:+$1: }building/checking the VM kit in $VM_DIR"
    local kit_t0
    kit_t0=$(now)
    "$LIB_DIR/build-kit.sh" "${@:2}" || vm_unavailable "no VM kit: tests/vm/build-kit.sh failed (see above)"
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
    for f in "$RUN"/qemu-*.log; do
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

# vm_fail LABEL REASON...: the verdict on a failure of a harness whose guests
# print SBNET- lines (the PMD and DPDK harnesses): the reason, each console's
# SBNET- lines (but the JSON) and its last lines, the QEMU and host-pair
# tails, "SBNET-VM-TEST: FAIL LABEL: REASON"; keeps the run directory, exit 1.
vm_fail() {
    local label=$1 f
    shift
    KEEP_RUN=1
    echo
    say "FAIL: $*"
    for f in "$RUN"/*.console; do
        [ -f "$f" ] || continue
        echo "----- ${f##*/} (serial console): every SBNET- line but the JSON -----"
        grep -a '^SBNET-' "$f" | grep -av '^SBNET-JSON' | tr -d '\r'
        echo "----- ${f##*/}: last 25 lines -----"
        tail -n 25 "$f" | tr -d '\r'
    done
    vm_fail_tails
    echo "SBNET-VM-TEST: FAIL $label: $*"
    exit 1
}

# ------------------------------------------------------------ host-pair
# vm_start_host_pair [ARG...]: host-pair serving RUN/a.sock (side 0) and
# RUN/b.sock (side 1), counters to RUN/stats.json at exit, log in
# RUN/host-pair.log; waits up to 5 s for both sockets. Sets HP_PID.
vm_start_host_pair() {
    say "starting host-pair: $HP serve --socket $RUN/a.sock --socket $RUN/b.sock --stats-json $RUN/stats.json $*"
    SBNET_LOG="${SBNET_LOG:-info}" NO_COLOR=1 "$HP" serve \
        --socket "$RUN/a.sock" --socket "$RUN/b.sock" \
        --stats-json "$RUN/stats.json" "$@" >"$RUN/host-pair.log" 2>&1 &
    HP_PID=$!
    for _ in $(seq 100); do
        [ -S "$RUN/a.sock" ] && [ -S "$RUN/b.sock" ] && break
        kill -0 "$HP_PID" 2>/dev/null || fail "host-pair exited at start-up"
        sleep 0.05
    done
    [ -S "$RUN/a.sock" ] && [ -S "$RUN/b.sock" ] || fail "host-pair did not create its sockets within 5 s"
}

# vm_stop_host_pair: SIGTERM, so that host-pair writes its final counters;
# sets HP_RC to its exit status.
vm_stop_host_pair() {
    kill -TERM "$HP_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$HP_PID" 2>/dev/null || break; sleep 0.05; done
    kill -0 "$HP_PID" 2>/dev/null && fail "host-pair did not exit within 5 s of SIGTERM"
    wait "$HP_PID"; HP_RC=$?
    HP_PID=
}

# ------------------------------------------------------------ QEMU
# vm_qemu NAME MACHINE INITRD APPEND [ARG...]: boots guest NAME in the
# background (PID added to PIDS) on RUN/NAME.sock with the kit's kernel,
# serial console RUN/NAME.console, QEMU's stderr RUN/qemu-NAME.log and its
# command line RUN/qemu-NAME.cmdline. APPEND is added to the kernel
# command line after "console=ttyS0 panic=-1 sbnet.timeout=GUEST_TIMEOUT".
# ARGs come before the vfio-user device (a virtual IOMMU must).
# VM_SMP=N: N vCPUs (default 1).
# VM_SOCKETS="x y": one vfio-user device per socket RUN/x.sock, RUN/y.sock
# instead of RUN/NAME.sock (a guest with two sbnet NICs).
# Environment: SBNET_VM_TRACE=1 or SBNET_VM_TRACE_EVENTS (QEMU trace
# events, space-separated; default VM_TRACE_DEFAULT) to RUN/qemu-NAME.trace;
# SBNET_VM_MONITOR=1 (an HMP monitor socket RUN/NAME.mon); SBNET_VM_QEMU_EXTRA.
VM_TRACE_DEFAULT="vfio_region_r* vfio_region_w* vfio_msix* vfio_intx* vfio_user_set_irqs vfio_user_dma*"
vm_qemu() {
    local name=$1 machine=$2 initrd=$3 append=$4 tail=() ev
    shift 4
    if [ "${SBNET_VM_TRACE:-0}" = 1 ] || [ -n "${SBNET_VM_TRACE_EVENTS:-}" ]; then
        for ev in ${SBNET_VM_TRACE_EVENTS:-$VM_TRACE_DEFAULT}; do
            tail+=(-trace "$ev")
        done
        tail+=(-D "$IN_RUN/qemu-$name.trace")
    fi
    # A monitor socket per guest (HMP: info mtree -f, info pci, info irq).
    [ "${SBNET_VM_MONITOR:-0}" = 1 ] && tail+=(-monitor "unix:$IN_RUN/$name.mon,server=on,wait=off")
    # shellcheck disable=SC2054  # the commas are QEMU's
    local args=(
        qemu-system-x86_64
        -name "sbnet-$name"
        -accel "$ACCEL"
        -machine "$machine"
        -object memory-backend-memfd,id=mem,size=256M,share=on
        -m 256M -smp "${VM_SMP:-1}"
        -nodefaults -nic none
        -display none -monitor none
        -serial "file:$IN_RUN/$name.console"
        -no-reboot
        "$@"
        -kernel "$SBNET_VM_KERNEL" -initrd "$initrd"
        -append "console=ttyS0 panic=-1 sbnet.timeout=$GUEST_TIMEOUT $append"
    )
    # One vfio-user device per socket: RUN/NAME.sock, or each of
    # VM_SOCKETS (basenames without .sock, in PCI order) when it is set.
    local sock
    for sock in ${VM_SOCKETS:-$name}; do
        args+=(-device "{\"driver\":\"vfio-user-pci\",\"socket\":{\"type\":\"unix\",\"path\":\"$IN_RUN/$sock.sock\"}}")
    done
    args+=("${tail[@]}")
    # shellcheck disable=SC2206
    [ -n "${SBNET_VM_QEMU_EXTRA:-}" ] && args+=(${SBNET_VM_QEMU_EXTRA})
    printf '%q ' chroot "$ROOT" "${args[@]}" >"$RUN/qemu-$name.cmdline"
    # A private mount namespace: /proc is mounted in the root for QEMU only and
    # disappears with it. The sockets, the kernel and the consoles are inside
    # the root, so QEMU sees them under /sbnet/.
    # With -accel kvm, /dev/kvm is bind-mounted into the root the same way.
    unshare --mount --propagation private /bin/sh -c '
        mount -t proc proc "$0/proc" || exit 1
        if [ "$1" = kvm ]; then
            [ -e "$0/dev/kvm" ] || touch "$0/dev/kvm"
            mount --bind /dev/kvm "$0/dev/kvm" || exit 1
        fi
        shift
        exec chroot "$0" "$@"' "$ROOT" "$ACCEL" "${args[@]}" >"$RUN/qemu-$name.log" 2>&1 &
    PIDS+=($!)
}

# ------------------------------------------------------------ the run
# result_of NAME: guest NAME's "SBNET-RESULT: ..." line, if it printed one.
result_of() { grep -a -m1 '^SBNET-RESULT:' "$RUN/$1.console" 2>/dev/null | tr -d '\r'; }
# result_field LINE KEY: the value of KEY=VALUE in a result line.
result_field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

# vm_wait_guests [HOOK]: waits until every QEMU has exited, a guest reports
# FAIL (then 3 s for the other to print), or TOTAL_TIMEOUT from the start;
# fails when host-pair dies or KVM cannot run a guest. HOOK runs every
# second (progress lines).
vm_wait_guests() {
    local deadline=$(( ${T0%.*} + TOTAL_TIMEOUT )) alive p g
    while :; do
        alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        kill -0 "$HP_PID" 2>/dev/null || fail "host-pair died while the guests were running"
        for g in a b; do
            grep -q 'KVM internal error' "$RUN/qemu-$g.log" 2>/dev/null \
                && fail "QEMU for guest $g: KVM internal error (KVM cannot run this guest here; use SBNET_VM_ACCEL=tcg)"
        done
        [ $# -gt 0 ] && "$@"
        for g in a b; do
            case "$(result_of $g)" in *FAIL*) sleep 3; break 2 ;; esac
        done
        if [ "$(date +%s)" -ge "$deadline" ]; then
            fail "timeout: the run did not finish within ${TOTAL_TIMEOUT} s (SBNET_VM_TIMEOUT)"
        fi
        sleep 1
    done
    say "guests stopped"
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
}

# vm_show_new PATTERN PREFIX: says each line of either guest's console that
# matches the grep PATTERN, once, without PREFIX (progress lines; a HOOK
# of vm_wait_guests).
declare -A VM_SHOWN=()
vm_show_new() {
    local g l
    for g in a b; do
        while IFS= read -r l; do
            [ -n "${VM_SHOWN[$g$l]:-}" ] && continue
            VM_SHOWN[$g$l]=1
            say "guest $g: ${l#"$2"}"
        done < <(grep -a "$1" "$RUN/$g.console" 2>/dev/null | tr -d '\r')
    done
}

# vm_check_result NAME: guest NAME printed a PASS result (else fail with
# why not: its line, no boot, or no result line). Sets RESULT.
vm_check_result() {
    RESULT=$(result_of "$1")
    if [ -z "$RESULT" ]; then
        if [ ! -s "$RUN/$1.console" ]; then
            fail "guest $1 did not boot: QEMU said: $(grep -m1 -v '^vfio_user' "$RUN/qemu-$1.log" 2>/dev/null || echo nothing)"
        fi
        fail "guest $1 printed no SBNET-RESULT line (guest crash or QEMU exit; last console line: $(tail -n1 "$RUN/$1.console" | tr -d '\r'))"
    fi
    case "$RESULT" in *": PASS "*) ;; *) fail "guest $1: ${RESULT#SBNET-RESULT: }" ;; esac
    say "guest $1: ${RESULT#SBNET-RESULT: }"
}

# ------------------------------------------------------------ host-pair's counters
# vm_stats_check: host-pair exited 0 (HP_RC) and wrote RUN/stats.json.
vm_stats_check() {
    [ "$HP_RC" = 0 ] || fail "host-pair exited with status $HP_RC"
    [ -s "$RUN/stats.json" ] || fail "host-pair wrote no $RUN/stats.json"
    jq -e '.sides | length == 2' "$RUN/stats.json" >/dev/null || fail "host-pair's $RUN/stats.json has no two sides"
}
# hp_counter SIDE NAME: one counter of one side from RUN/stats.json.
hp_counter() { jq -r --argjson k "$1" --arg c "$2" '.sides[$k][$c] // empty' "$RUN/stats.json"; }
# vm_show_counters NAME...: a line per side with these counters.
vm_show_counters() {
    local k c line
    for k in 0 1; do
        line="side $k:"
        for c in "$@"; do line="$line $c=$(hp_counter $k "$c")"; done
        say "host-pair $line"
    done
}
# vm_check_no_refusals WHY: no refusal (host-pair's per-side `refusals`
# total) and no needs_reset on either side; the failure lists the side's
# non-zero counters.
vm_check_no_refusals() {
    local k
    for k in 0 1; do
        [ "$(hp_counter $k refusals)" = 0 ] && [ "$(hp_counter $k needs_reset)" = 0 ] \
            || fail "host-pair counters: side $k refusals=$(hp_counter $k refusals) needs_reset=$(hp_counter $k needs_reset) ($1; non-zero: $(jq -c --argjson k "$k" '.sides[$k] | with_entries(select(.value != 0))' "$RUN/stats.json"))"
    done
}
