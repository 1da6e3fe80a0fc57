#!/bin/bash
# run-stock-pair.sh: the two-VM test with the stock Linux virtio_net driver.
#
#   host-pair serves two sbnet functions on sockets inside the kit's root;
#   guest A (169.254.0.1, client) and guest B (169.254.0.2, server) boot under
#   QEMU (TCG) with `-device vfio-user-pci`; A pings B 5 times, then sends
#   SBNET_VM_BYTES random bytes to B with busybox nc. Both print SHA-256 sums.
#   PASS when both guests report PASS, the sums and sizes match, and
#   host-pair's counters show copied packets in both directions and no refusal.
#
# Usage (as root, from anywhere):  tests/vm/run-stock-pair.sh
# Environment:
#   SBNET_VM_DIR        kit cache (default /var/cache/sbnet-vm), see build-kit.sh
#   SBNET_HOST_PAIR     host-pair binary (default: <repo>/target/release/host-pair,
#                       built with `cargo build --release -p host-pair` if missing)
#   SBNET_VM_ACCEL      tcg (default) or kvm
#   SBNET_VM_BYTES      bytes A sends to B (default 4194304)
#   SBNET_VM_TIMEOUT    seconds for the whole run, boot to verdict (default 300)
#   SBNET_VM_GUESTS     2 (default) or 1: boot only guest A with role idle
#                       (enumeration/driver-binding check, no traffic)
#   SBNET_VM_QEMU_EXTRA extra QEMU arguments, split on spaces (e.g. "-cpu host")
#   SBNET_VM_TRACE=1    QEMU traces of vfio register accesses and IRQ set-up
#   SBNET_VM_KEEP=1     keep the run directory even when the test passes
#   SBNET_LOG           host-pair's log filter (default info)
# Exit status: 0 PASS, 1 FAIL (the reason is printed), 2 setup error.
# The verdict is the line "SBNET-VM-TEST: PASS ..." or "SBNET-VM-TEST: FAIL reason"
# (only "run directory kept: ..." may follow it).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/vm/lib.sh
. "$HERE/lib.sh"
BYTES="${SBNET_VM_BYTES:-4194304}"
GUESTS="${SBNET_VM_GUESTS:-2}"

vm_preflight
case "$GUESTS" in 1|2) ;; *) setup_error "SBNET_VM_GUESTS must be 1 or 2";; esac

# ------------------------------------------------------------ kit + host-pair
vm_kit ""
vm_host_pair
vm_run_dir stock

# The verdict on failure: reason, then the tails of every log.
fail() {
    KEEP_RUN=1
    echo
    say "FAIL: $*"
    local f
    for f in "$RUN"/a.console "$RUN"/b.console; do
        [ -f "$f" ] || continue
        echo "----- last 40 lines of ${f##*/} (serial console) -----"
        tail -n 40 "$f" | tr -d '\r'
    done
    vm_fail_tails
    echo "SBNET-VM-TEST: FAIL $*"
    exit 1
}

# ------------------------------------------------------------ host-pair
say "starting host-pair: $HP serve --socket $RUN/a.sock --socket $RUN/b.sock --stats-json $RUN/stats.json"
SBNET_LOG="${SBNET_LOG:-info}" NO_COLOR=1 "$HP" serve \
    --socket "$RUN/a.sock" --socket "$RUN/b.sock" \
    --stats-json "$RUN/stats.json" >"$RUN/host-pair.log" 2>&1 &
HP_PID=$!
for _ in $(seq 100); do
    [ -S "$RUN/a.sock" ] && [ -S "$RUN/b.sock" ] && break
    kill -0 "$HP_PID" 2>/dev/null || fail "host-pair exited at start-up"
    sleep 0.05
done
[ -S "$RUN/a.sock" ] && [ -S "$RUN/b.sock" ] || fail "host-pair did not create its sockets within 5 s"

# ------------------------------------------------------------ guests
# start_guest NAME IP ROLE PEER
start_guest() {
    local name=$1 ip=$2 role=$3 peer=$4 trace=()
    if [ "${SBNET_VM_TRACE:-0}" = 1 ]; then
        trace=(-trace 'vfio_region_r*' -trace 'vfio_region_w*' -trace 'vfio_msix*' -trace 'vfio_intx*'
               -trace 'vfio_user_set_irqs' -trace 'vfio_user_dma*' -D "$IN_RUN/qemu-$name.trace")
    fi
    # shellcheck disable=SC2054  # the commas are QEMU's
    local args=(
        qemu-system-x86_64
        -name "sbnet-$name"
        -accel "$ACCEL"
        -machine q35,memory-backend=mem
        -object memory-backend-memfd,id=mem,size=256M,share=on
        -m 256M -smp 1
        -nodefaults -nic none
        -display none -monitor none
        -serial "file:$IN_RUN/$name.console"
        -no-reboot
        -kernel "$SBNET_VM_KERNEL" -initrd "$SBNET_VM_INITRD"
        -append "console=ttyS0 panic=-1 sbnet.ip=$ip/16 sbnet.role=$role sbnet.peer=$peer sbnet.bytes=$BYTES sbnet.timeout=$GUEST_TIMEOUT"
        -device "{\"driver\":\"vfio-user-pci\",\"socket\":{\"type\":\"unix\",\"path\":\"$IN_RUN/$name.sock\"}}"
        "${trace[@]}"
    )
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

if [ "$GUESTS" = 2 ]; then
    say "booting guest b (169.254.0.2, server) and guest a (169.254.0.1, client), accel $ACCEL, QEMU $SBNET_VM_QEMU_VERSION, kernel $SBNET_VM_KERNEL_VERSION"
    start_guest b 169.254.0.2 server 169.254.0.1
    start_guest a 169.254.0.1 client 169.254.0.2
else
    say "booting guest a alone (169.254.0.1, role idle), accel $ACCEL"
    start_guest a 169.254.0.1 idle ""
fi

# ------------------------------------------------------------ wait
deadline=$(( ${T0%.*} + TOTAL_TIMEOUT ))
result_of() { grep -a -m1 '^SBNET-RESULT:' "$RUN/$1.console" 2>/dev/null | tr -d '\r'; }
seen_carrier=0
while :; do
    alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    kill -0 "$HP_PID" 2>/dev/null || fail "host-pair died while the guests were running"
    for g in a b; do
        grep -q 'KVM internal error' "$RUN/qemu-$g.log" 2>/dev/null \
            && fail "QEMU for guest $g: KVM internal error (KVM cannot run this guest here; use SBNET_VM_ACCEL=tcg)"
    done
    # A failing guest: give the other a moment to print, then stop.
    for g in a b; do
        case "$(result_of $g)" in *FAIL*) sleep 3; break 2 ;; esac
    done
    if [ $seen_carrier = 0 ] && grep -aq 'SBNET-INFO: carrier up' "$RUN/a.console" 2>/dev/null; then
        seen_carrier=1
        say "guest a: $(grep -a -m1 'SBNET-INFO: carrier up' "$RUN/a.console" | tr -d '\r' | sed 's/^SBNET-INFO: //')"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        fail "timeout: the run did not finish within ${TOTAL_TIMEOUT} s (SBNET_VM_TIMEOUT)"
    fi
    sleep 1
done
say "guests stopped"
for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done

# Stop host-pair so it writes its final counters.
kill -TERM "$HP_PID" 2>/dev/null
for _ in $(seq 100); do kill -0 "$HP_PID" 2>/dev/null || break; sleep 0.05; done
kill -0 "$HP_PID" 2>/dev/null && fail "host-pair did not exit within 5 s of SIGTERM"
wait "$HP_PID"; hp_rc=$?
HP_PID=

# ------------------------------------------------------------ verdict
for g in a $([ "$GUESTS" = 2 ] && echo b); do
    grep -a '^SBNET-INFO: sbnet NIC\|^SBNET-STATS' "$RUN/$g.console" 2>/dev/null | tr -d '\r' | sed "s/^/  guest $g: /"
done
no_result() {  # why guest $1 printed no result
    if [ ! -s "$RUN/$1.console" ]; then
        fail "guest $1 did not boot: QEMU said: $(grep -m1 -v '^vfio_user' "$RUN/qemu-$1.log" 2>/dev/null || echo nothing)"
    fi
    fail "guest $1 printed no SBNET-RESULT line (guest crash or QEMU exit; last console line: $(tail -n1 "$RUN/$1.console" | tr -d '\r'))"
}
ra=$(result_of a)
[ -n "$ra" ] || no_result a
case "$ra" in *": PASS "*) ;; *) fail "guest a: ${ra#SBNET-RESULT: }" ;; esac
say "guest a: ${ra#SBNET-RESULT: }"
if [ "$GUESTS" = 2 ]; then
    rb=$(result_of b)
    [ -n "$rb" ] || no_result b
    case "$rb" in *": PASS "*) ;; *) fail "guest b: ${rb#SBNET-RESULT: }" ;; esac
    say "guest b: ${rb#SBNET-RESULT: }"
    field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
    tx_sum=$(field "$ra" tx_sha256); rx_sum=$(field "$rb" rx_sha256)
    tx_n=$(field "$ra" tx_bytes); rx_n=$(field "$rb" rx_bytes)
    [ "$tx_n" = "$rx_n" ] || fail "size mismatch: a sent $tx_n bytes, b received $rx_n"
    [ -n "$tx_sum" ] && [ "$tx_sum" = "$rx_sum" ] || fail "checksum mismatch: a sent sha256 $tx_sum, b received sha256 $rx_sum"
    say "checksums match: $tx_n bytes, sha256 $tx_sum"
fi

[ "$hp_rc" = 0 ] || fail "host-pair exited with status $hp_rc"
[ -s "$RUN/stats.json" ] || fail "host-pair wrote no $RUN/stats.json"
stats=$(tr -d ' \n' <"$RUN/stats.json")
# counter SIDE NAME: one integer from {"sides":[{...},{...}]}
counter() {
    printf '%s' "$stats" | sed 's/.*"sides":\[//; s/\]}*$//' | sed 's/},{/}\n{/g' \
        | sed -n "$(($1 + 1))p" | tr ',{}' '\n\n\n' | sed -n "s/^\"$2\"://p"
}
for k in 0 1; do
    line="side $k:"
    for c in tx_packets rx_packets tx_copied tx_zero_copy rx_no_buffer tx_no_peer kicks interrupts dma_refused resets needs_reset; do
        line="$line $c=$(counter $k $c)"
    done
    say "host-pair $line"
done
if [ "$GUESTS" = 2 ]; then
    for k in 0 1; do
        n=$(counter $k tx_copied)
        [ "${n:-0}" -gt 0 ] || fail "host-pair counters: side $k copied no packet (tx_copied=${n:-missing})"
    done
fi
for k in 0 1; do
    for c in bad_chain bad_slot_ref tx_not_owner rx_post_not_peer_owned rx_post_duplicate frame_too_big bad_gift needs_reset; do
        n=$(counter $k "$c")
        [ "${n:-0}" = 0 ] || fail "host-pair counters: side $k $c=$n (the stock driver must cause no refusal)"
    done
done

say "PASS"
if [ "$GUESTS" = 2 ]; then
    echo "SBNET-VM-TEST: PASS bytes=$tx_n sha256=$tx_sum side0_tx_copied=$(counter 0 tx_copied) side1_tx_copied=$(counter 1 tx_copied) seconds=$(now)"
else
    echo "SBNET-VM-TEST: PASS single guest enumerated and bound virtio_net, seconds=$(now)"
fi
exit 0
