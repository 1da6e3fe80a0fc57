#!/bin/bash
# run-mq-pair.sh: multiqueue with the stock Linux virtio_net driver (issue 12).
#
#   host-pair serves one link with --queue-pairs 2; guest A (client) and
#   guest B (server) boot with 2 vCPUs each and switch their sbnet NIC to two
#   combined channels with `ethtool -L eth0 combined 2` (the control queue's
#   VQ_PAIRS_SET). A sends SBNET_VM_FLOWS TCP streams to B, flow f from a
#   process pinned to CPU f % 2, so that XPS puts them on both transmit
#   queues. PASS when both guests report PASS, every stream's size and
#   SHA-256 match, both guests' per-queue counters (ethtool -S) show packets
#   on both queue pairs in both directions, host-pair's per-queue counters
#   show the same, and nothing was refused.
#
# Usage (as root, from anywhere):  tests/vm/run-mq-pair.sh
# Environment: as run-stock-pair.sh (SBNET_VM_DIR, SBNET_HOST_PAIR,
#   SBNET_VM_ACCEL, SBNET_VM_TIMEOUT, SBNET_VM_KEEP, SBNET_LOG, SBNET_VM_TRACE*,
#   SBNET_VM_MONITOR, SBNET_VM_QEMU_EXTRA), and
#   SBNET_VM_BYTES      bytes A sends in all (default 4194304)
#   SBNET_VM_FLOWS      TCP streams (default 4)
# Exit status and verdict line: as run-stock-pair.sh.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/vm/lib.sh
. "$HERE/lib.sh"
BYTES="${SBNET_VM_BYTES:-4194304}"
FLOWS="${SBNET_VM_FLOWS:-4}"
QUEUES=2

vm_preflight
case "$FLOWS" in [2-8]) ;; *) setup_error "SBNET_VM_FLOWS must be 2..8";; esac

vm_kit ""
vm_host_pair
vm_run_dir mq

fail() { vm_fail mq "$@"; }

vm_start_host_pair --queue-pairs "$QUEUES"

say "booting guest b (169.254.0.2, mq-server) and guest a (169.254.0.1, mq-client), 2 vCPUs each, $QUEUES queue pairs, accel $ACCEL"
common="sbnet.queues=$QUEUES sbnet.flows=$FLOWS sbnet.bytes=$BYTES"
VM_SMP=2 vm_qemu b q35,memory-backend=mem "$SBNET_VM_INITRD" "sbnet.ip=169.254.0.2/16 sbnet.role=mq-server $common"
VM_SMP=2 vm_qemu a q35,memory-backend=mem "$SBNET_VM_INITRD" "sbnet.ip=169.254.0.1/16 sbnet.role=mq-client sbnet.peer=169.254.0.2 $common"
vm_wait_guests
vm_stop_host_pair

# ------------------------------------------------------------ verdict
for g in a b; do
    grep -a '^SBNET-INFO: sbnet NIC\|^SBNET-INFO: eth0 has\|per-queue\|^SBNET-STATS' "$RUN/$g.console" 2>/dev/null | tr -d '\r' | sed "s/^/  guest $g: /"
done
vm_check_result a; ra=$RESULT
vm_check_result b; rb=$RESULT
for f in $(seq 0 $((FLOWS - 1))); do
    t=$(result_field "$ra" "tx_sha256_$f"); r=$(result_field "$rb" "rx_sha256_$f")
    [ -n "$t" ] && [ "$t" = "$r" ] || fail "flow $f: a sent sha256 ${t:-none}, b received sha256 ${r:-none}"
done
say "all $FLOWS streams arrived intact ($(result_field "$rb" bytes) bytes each)"
for q in 0 1; do
    for r in "a:$ra:tx" "a:$ra:rx" "b:$rb:tx" "b:$rb:rx"; do
        g=${r%%:*} d=${r##*:} line=${r#*:}; line=${line%:*}
        n=$(result_field "$line" "$d$q")
        [ "${n:-0}" -gt 0 ] || fail "guest $g: ethtool -S shows no packet on ${d}_queue_$q (${n:-missing}): traffic did not use both queue pairs"
    done
done

vm_stats_check
vm_check_no_refusals "the stock driver must cause no refusal"
# q_counter SIDE PAIR NAME: a per-queue-pair counter of host-pair.
q_counter() { jq -r --argjson k "$1" --argjson q "$2" --arg c "$3" '.sides[$k].queues[$q][$c] // empty' "$RUN/stats.json"; }
for k in 0 1; do
    line="host-pair side $k per queue pair:"
    for q in 0 1; do
        line="$line [$q] tx=$(q_counter $k $q tx_packets) rx=$(q_counter $k $q rx_packets)"
        for c in tx_packets rx_packets; do
            n=$(q_counter $k $q $c)
            [ "${n:-0}" -gt 0 ] || fail "host-pair: side $k queue pair $q has $c=${n:-missing}"
        done
    done
    say "$line"
    [ "$(hp_counter $k ctrl_ok)" -ge 1 ] || fail "host-pair: side $k answered no control command with OK (ctrl_ok=$(hp_counter $k ctrl_ok))"
done

say "PASS"
echo "SBNET-VM-TEST: PASS multiqueue flows=$FLOWS a:$(for q in 0 1; do printf 'tx%s=%s ' $q "$(result_field "$ra" tx$q)"; done)b:$(for q in 0 1; do printf 'rx%s=%s ' $q "$(result_field "$rb" rx$q)"; done)seconds=$(now)"
exit 0
