#!/bin/bash
# run-chain.sh: three VMs in a chain, A — B — C, stock Linux virtio_net
# drivers, over two links served by ONE host-pair (issue 12, §3).
#
#   link "ab": side 0 = guest A (169.254.1.1/24), side 1 = guest B's first NIC
#              (169.254.1.2/24)
#   link "bc": side 0 = guest B's second NIC (169.254.2.2/24), side 1 = guest C
#              (169.254.2.3/24)
#   B forwards IPv4 between its two NICs (ip_forward=1); A routes
#   169.254.2.0/24 via B, C routes 169.254.1.0/24 via B. A pings C 5 times,
#   then sends SBNET_VM_BYTES random bytes to C with busybox nc.
#   PASS when A, B and C report PASS, the sums and sizes match, and
#   host-pair's per-link counters show copied packets on both links in both
#   directions and no refusal. Each link has its own region: the frames B
#   forwards cross from one to the other (the kernel copies them).
#
# Usage (as root, from anywhere):  tests/vm/run-chain.sh
# Environment: as run-stock-pair.sh (SBNET_VM_DIR, SBNET_HOST_PAIR,
#   SBNET_VM_ACCEL, SBNET_VM_BYTES, SBNET_VM_TIMEOUT, SBNET_VM_KEEP, SBNET_LOG,
#   SBNET_VM_TRACE*, SBNET_VM_MONITOR, SBNET_VM_QEMU_EXTRA); and
#   SBNET_VM_THREADS    host-pair --threads (default 2: one per link)
# Exit status and verdict line: as run-stock-pair.sh.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/vm/lib.sh
. "$HERE/lib.sh"
BYTES="${SBNET_VM_BYTES:-4194304}"
THREADS="${SBNET_VM_THREADS:-2}"
GUESTS=(a b c)

vm_preflight
case "$THREADS" in [1-9]) ;; *) setup_error "SBNET_VM_THREADS must be 1..9";; esac

vm_kit ""
vm_host_pair
vm_run_dir chain

fail() { vm_fail chain "$@"; }

# ------------------------------------------------------------ host-pair: two links, one process
cat >"$RUN/links.toml" <<EOF
# The chain A — B — C: one link per pair of neighbours.
[[link]]
name = "ab"
sockets = ["$RUN/a.sock", "$RUN/b1.sock"]

[[link]]
name = "bc"
sockets = ["$RUN/b2.sock", "$RUN/c.sock"]
EOF
say "starting host-pair: $HP serve --config $RUN/links.toml --threads $THREADS --stats-json $RUN/stats.json"
SBNET_LOG="${SBNET_LOG:-info}" NO_COLOR=1 "$HP" serve --config "$RUN/links.toml" --threads "$THREADS" \
    --stats-json "$RUN/stats.json" >"$RUN/host-pair.log" 2>&1 &
HP_PID=$!
for _ in $(seq 100); do
    [ -S "$RUN/a.sock" ] && [ -S "$RUN/b1.sock" ] && [ -S "$RUN/b2.sock" ] && [ -S "$RUN/c.sock" ] && break
    kill -0 "$HP_PID" 2>/dev/null || fail "host-pair exited at start-up"
    sleep 0.05
done
for s in a b1 b2 c; do
    [ -S "$RUN/$s.sock" ] || fail "host-pair did not create $RUN/$s.sock within 5 s"
done

# ------------------------------------------------------------ guests
say "booting guests c (server), b (router) and a (client), accel $ACCEL, QEMU $SBNET_VM_QEMU_VERSION, kernel $SBNET_VM_KERNEL_VERSION"
vm_qemu c q35,memory-backend=mem "$SBNET_VM_INITRD" \
    "sbnet.ip=169.254.2.3/24 sbnet.route=169.254.1.0/24,169.254.2.2 sbnet.role=server sbnet.bytes=$BYTES"
VM_SOCKETS="b1 b2" vm_qemu b q35,memory-backend=mem "$SBNET_VM_INITRD" \
    "sbnet.ip=169.254.1.2/24 sbnet.ip2=169.254.2.2/24 sbnet.role=router sbnet.bytes=$BYTES"
vm_qemu a q35,memory-backend=mem "$SBNET_VM_INITRD" \
    "sbnet.ip=169.254.1.1/24 sbnet.route=169.254.2.0/24,169.254.1.2 sbnet.role=client sbnet.peer=169.254.2.3 sbnet.bytes=$BYTES"

# ------------------------------------------------------------ wait (all three exit, or a FAIL, or the deadline)
deadline=$(( ${T0%.*} + TOTAL_TIMEOUT ))
while :; do
    alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    kill -0 "$HP_PID" 2>/dev/null || fail "host-pair died while the guests were running"
    failed=0
    for g in "${GUESTS[@]}"; do
        case "$(result_of "$g")" in *FAIL*) failed=1 ;; esac
    done
    [ $failed = 1 ] && { sleep 3; break; }
    [ "$(date +%s)" -ge "$deadline" ] && fail "timeout: the run did not finish within ${TOTAL_TIMEOUT} s (SBNET_VM_TIMEOUT)"
    sleep 1
done
say "guests stopped"
for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
vm_stop_host_pair

# ------------------------------------------------------------ verdict
for g in "${GUESTS[@]}"; do
    grep -a '^SBNET-INFO: sbnet NIC\|^SBNET-INFO: route\|^SBNET-STATS' "$RUN/$g.console" 2>/dev/null | tr -d '\r' | sed "s/^/  guest $g: /"
done
vm_check_result a; ra=$RESULT
vm_check_result b; rb=$RESULT
vm_check_result c; rc=$RESULT
tx_sum=$(result_field "$ra" tx_sha256); rx_sum=$(result_field "$rc" rx_sha256)
tx_n=$(result_field "$ra" tx_bytes); rx_n=$(result_field "$rc" rx_bytes)
[ "$tx_n" = "$rx_n" ] || fail "size mismatch: a sent $tx_n bytes, c received $rx_n"
[ -n "$tx_sum" ] && [ "$tx_sum" = "$rx_sum" ] || fail "checksum mismatch: a sent sha256 $tx_sum, c received sha256 $rx_sum"
say "checksums match across the chain: $tx_n bytes, sha256 $tx_sum (b: ${rb#*PASS })"

[ "$HP_RC" = 0 ] || fail "host-pair exited with status $HP_RC"
[ -s "$RUN/stats.json" ] || fail "host-pair wrote no $RUN/stats.json"
jq -e '.links | length == 2' "$RUN/stats.json" >/dev/null || fail "host-pair's stats.json does not list two links"
# link_counter LINK SIDE NAME
link_counter() { jq -r --arg l "$1" --argjson k "$2" --arg c "$3" '.links[] | select(.name == $l) | .sides[$k][$c] // empty' "$RUN/stats.json"; }
for l in ab bc; do
    for k in 0 1; do
        say "host-pair link $l side $k: tx_packets=$(link_counter $l $k tx_packets) tx_copied=$(link_counter $l $k tx_copied) tx_zero_copy=$(link_counter $l $k tx_zero_copy) refusals=$(link_counter $l $k refusals) needs_reset=$(link_counter $l $k needs_reset)"
        n=$(link_counter $l $k tx_copied)
        [ "${n:-0}" -gt 0 ] || fail "host-pair counters: link $l side $k copied no packet (tx_copied=${n:-missing})"
        [ "$(link_counter $l $k refusals)" = 0 ] && [ "$(link_counter $l $k needs_reset)" = 0 ] \
            || fail "host-pair counters: link $l side $k refusals=$(link_counter $l $k refusals) needs_reset=$(link_counter $l $k needs_reset)"
    done
done

say "PASS"
echo "SBNET-VM-TEST: PASS chain a-b-c bytes=$tx_n sha256=$tx_sum ab_copied=$(link_counter ab 0 tx_copied)/$(link_counter ab 1 tx_copied) bc_copied=$(link_counter bc 0 tx_copied)/$(link_counter bc 1 tx_copied) seconds=$(now)"
exit 0
