#!/bin/sh
# The guest side of the stock two-VM test (run by /init with IF, IP, PEER,
# ROLE, BYTES, TIMEOUT set). Writes "PASS key=value..." or "FAIL reason" to
# /tmp/result; /init prints it as SBNET-RESULT and powers off.
#
#   server: receives one TCP stream on port 5001 with busybox nc, prints the
#           byte count and SHA-256 of what it received.
#   client: pings the server 5 times, then sends BYTES random bytes to it with
#           busybox nc and prints their byte count and SHA-256.
# The harness compares the two checksums.
#   mixed-stock: the stock side of the mixed test (the peer runs the sbnet
#           PMD, which echoes frames and then generates its own). With a
#           static ARP entry for PEER (PEERMAC), sends COUNT pings, then waits
#           until the interface has received EXPECT frames in all (the
#           echoes plus the PMD's own frames) and reports the interface
#           counters. Booted with ipv6.disable=1, so nothing else is sent.
#   mq-server / mq-client: multiqueue (issue 12). Both sides first switch
#           their NIC to QUEUES combined channels with `ethtool -L`. The
#           client (2 vCPUs: XPS maps CPU i to transmitq i) sends FLOWS TCP
#           streams of BYTES/FLOWS random bytes each, flow f from a process
#           pinned to CPU f % 2, to ports 5001.. of the server; the server
#           checks each stream's size and SHA-256 against the sums the
#           client announced on the serial console (the harness compares
#           them) and both report the interrupts of each receive queue and the kicks
#           of each transmit queue.
#   router: the middle guest of the three-VM chain (two sbnet NICs, IF and
#           IF2, on two links). Forwards IPv4 between them (ip_forward=1)
#           until at least BYTES bytes came in on IF and then both NICs were
#           quiet for 3 s; reports how many packets it forwarded each way.
#   count-rx: the stock receiver of the DPDK test (the peer runs DPDK's
#           testpmd, rxonly until it gets a frame, then txonly). With a
#           static ARP entry for PEER (PEERMAC), sends a ping every 0.5 s
#           until the first frame arrives, then counts received frames
#           until none came for 5 s. Booted with ipv6.disable=1.
PORT=5001
res() { echo "$*" >/tmp/result; exit 0; }
now() { cut -d' ' -f1 /proc/uptime; }

case "$ROLE" in
server)
    echo "SBNET-INFO: server listening on $IP port $PORT"
    t0=$(now)
    # nc -e runs the receiver on the accepted socket. (A plain `nc -l >file`
    # with stdin at EOF would half-close the connection at once, and busybox
    # nc on the client side exits as soon as it reads EOF from the network.)
    printf '#!/bin/sh\nexec cat >/tmp/rx\n' >/tmp/receiver
    chmod +x /tmp/receiver
    : >/tmp/rx
    nc -l -p $PORT -e /tmp/receiver </dev/null
    rc=$?
    t1=$(now)
    n=$(wc -c </tmp/rx)
    sum=$(sha256sum </tmp/rx | cut -d' ' -f1)
    echo "SBNET-INFO: server received $n bytes sha256 $sum (nc exit $rc, $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s)"
    [ "$n" -gt 0 ] || res "FAIL received no data (nc exit $rc)"
    res "PASS rx_bytes=$n rx_sha256=$sum"
    ;;
client)
    [ -n "$PEER" ] || res "FAIL no sbnet.peer given"
    if [ -n "$ROUTE" ]; then
        # The peer is behind a router that may still be setting up its
        # second NIC and forwarding: wait (60 tries) until one ping
        # gets through before the counted pings.
        i=0
        until ping -c 1 -W 1 "$PEER" >/dev/null 2>&1; do
            i=$((i + 1))
            [ $i -ge 60 ] && res "FAIL $PEER unreachable through the route ${ROUTE%,*} via ${ROUTE#*,} (60 pings lost)"
            sleep 0.5
        done
        echo "SBNET-INFO: client: $PEER reachable through ${ROUTE#*,} after $i lost pings"
    fi
    echo "SBNET-INFO: client pinging $PEER"
    ping -c 5 -W 5 "$PEER" >/tmp/ping 2>&1
    prc=$?
    sed 's/^/SBNET-INFO: ping: /' /tmp/ping
    recv=$(sed -n 's/.* \([0-9][0-9]*\) packets received.*/\1/p' /tmp/ping)
    [ "$prc" = 0 ] && [ "${recv:-0}" = 5 ] || res "FAIL ping $PEER: ${recv:-0}/5 replies (exit $prc)"
    blocks=$(( (BYTES + 65535) / 65536 ))
    dd if=/dev/urandom of=/tmp/tx bs=65536 count=$blocks 2>/dev/null || res "FAIL cannot create test data"
    n=$(wc -c </tmp/tx)
    sum=$(sha256sum </tmp/tx | cut -d' ' -f1)
    echo "SBNET-INFO: client sending $n bytes sha256 $sum to $PEER:$PORT"
    t0=$(now)
    tries=0
    # The server may not listen yet: retry refused connections for a while.
    until nc -w 30 "$PEER" $PORT </tmp/tx >/dev/null 2>/tmp/nc.err; do
        tries=$((tries + 1))
        [ $tries -ge 30 ] && res "FAIL nc to $PEER:$PORT failed $tries times: $(cat /tmp/nc.err)"
        sleep 1
    done
    t1=$(now)
    echo "SBNET-INFO: client sent $n bytes in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s"
    res "PASS ping=5/5 tx_bytes=$n tx_sha256=$sum"
    ;;
mixed-stock)
    [ -n "$PEER" ] && [ -n "$PEERMAC" ] || res "FAIL mixed-stock needs sbnet.peer and sbnet.peermac"
    s=/sys/class/net/$IF/statistics
    # The PMD opens its port before this side sees carrier, but give it a
    # moment to post its receive buffers.
    sleep 1
    rx0=$(cat $s/rx_packets) tx0=$(cat $s/tx_packets)
    arp -i "$IF" -s "$PEER" "$PEERMAC" || res "FAIL arp -s $PEER $PEERMAC failed"
    echo "SBNET-INFO: mixed-stock: sending $COUNT pings to $PEER ($PEERMAC), then waiting for $EXPECT frames (rx_packets=$rx0 tx_packets=$tx0)"
    t0=$(now)
    # The echoes come back MAC-swapped but still addressed to the PMD's IP,
    # so ping sees no reply: its transmit count is what matters.
    ping -c "$COUNT" -i 0.2 -W 1 "$PEER" >/tmp/ping 2>&1
    sed 's/^/SBNET-INFO: ping: /' /tmp/ping | tail -3
    sent=$(sed -n 's/^\([0-9][0-9]*\) packets transmitted.*/\1/p' /tmp/ping)
    [ "${sent:-0}" = "$COUNT" ] || res "FAIL ping sent ${sent:-0} of $COUNT echo requests"
    # Wait for EXPECT frames (bounded by the guest timeout), then 2 s of quiet.
    last=-1 quiet=0
    while :; do
        got=$(( $(cat $s/rx_packets) - rx0 ))
        echo " waiting for $EXPECT frames, $got received" >/tmp/doing
        if [ "$got" = "$last" ]; then quiet=$((quiet + 1)); else quiet=0; fi
        last=$got
        [ "$got" -ge "$EXPECT" ] && [ $quiet -ge 20 ] && break
        if [ $quiet -ge 600 ]; then
            res "FAIL received $got of $EXPECT frames (nothing new for 60 s); sent $(( $(cat $s/tx_packets) - tx0 ))"
        fi
        sleep 0.1
    done
    t1=$(now)
    rx=$(( $(cat $s/rx_packets) - rx0 )) tx=$(( $(cat $s/tx_packets) - tx0 ))
    echo "SBNET-INFO: mixed-stock: received $rx frames, sent $tx in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s"
    res "PASS pings=$sent rx_frames=$rx tx_frames=$tx rx_dropped=$(cat $s/rx_dropped) rx_nohandler=$(cat $s/rx_nohandler 2>/dev/null) rx_errors=$(cat $s/rx_errors)"
    ;;
mq-server|mq-client)
    Q=${QUEUES:-2} F=${FLOWS:-4}
    command -v ethtool >/dev/null || res "FAIL no ethtool in the initramfs"
    ethtool -L "$IF" combined "$Q" 2>/tmp/ethtool.err || res "FAIL ethtool -L $IF combined $Q: $(cat /tmp/ethtool.err)"
    cur=$(ethtool -l "$IF" | awk '/Current hardware settings/ {c=1} c && /^Combined:/ {print $2; exit}')
    [ "$cur" = "$Q" ] || res "FAIL ethtool -l $IF shows $cur combined channels, not $Q"
    echo "SBNET-INFO: $IF has $Q combined channels (max $(ethtool -l "$IF" | awk '/^Combined:/ {print $2; exit}')), $(nproc) CPUs"
    # per_queue: "rx_irqs0=.. rx_irqs1=.. tx_kicks0=.. tx_kicks1=..": the
    # interrupts of each receive queue (/proc/interrupts, virtioN-input.Q,
    # all CPUs) and the notifications of each transmit queue (ethtool -S
    # txQ_kicks, or tx_queue_Q_kicks before Linux 6.10). Since 6.10
    # ethtool -S no longer counts packets per queue; host-pair does.
    per_queue() {
        { ethtool -S "$IF" 2>/dev/null; cat /proc/interrupts; } | awk -v q="$Q" '
            $1 ~ /^tx(_queue_)?[0-9]+_kicks:$/ { k = $1; sub(/^tx(_queue_)?/, "", k); sub(/_kicks:$/, "", k); kicks[k] = $2 }
            $NF ~ /^virtio[0-9]+-input\.[0-9]+$/ {
                k = $NF; sub(/^.*\./, "", k)
                for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) irqs[k] += $i
            }
            END { for (i = 0; i < q; i++) printf "rx_irqs%d=%s ", i, irqs[i] + 0; for (i = 0; i < q; i++) printf "tx_kicks%d=%s ", i, kicks[i] + 0 }'
    }
    per=$(( BYTES / F ))
    if [ "$ROLE" = mq-server ]; then
        printf '#!/bin/sh\nexec cat >"$1"\n' >/tmp/receiver
        chmod +x /tmp/receiver
        for f in $(seq 0 $((F - 1))); do
            : >/tmp/rx$f
            printf '#!/bin/sh\nexec /tmp/receiver /tmp/rx%s\n' "$f" >/tmp/recv$f
            chmod +x /tmp/recv$f
            nc -l -p $((PORT + f)) -e /tmp/recv$f </dev/null &
            eval "pid$f=\$!"
        done
        echo "SBNET-INFO: mq-server listening on ports $PORT..$((PORT + F - 1))"
        sums=''
        for f in $(seq 0 $((F - 1))); do
            eval "wait \$pid$f"
            n=$(wc -c </tmp/rx$f)
            [ "$n" = "$per" ] || res "FAIL flow $f: received $n bytes, want $per"
            sums="$sums rx_sha256_$f=$(sha256sum </tmp/rx$f | cut -d' ' -f1)"
        done
        pq=$(per_queue)
        echo "SBNET-INFO: mq-server per-queue packets: $pq"
        res "PASS flows=$F bytes=$per $pq$sums"
    fi
    [ "$(nproc)" -ge 2 ] || res "FAIL mq-client needs 2 CPUs (one per transmit queue), has $(nproc)"
    ping -c 3 -W 5 "$PEER" >/dev/null 2>&1 || res "FAIL ping $PEER before the flows"
    sums=''
    for f in $(seq 0 $((F - 1))); do
        dd if=/dev/urandom of=/tmp/tx$f bs=$per count=1 2>/dev/null
        [ "$(wc -c </tmp/tx$f)" = "$per" ] || res "FAIL cannot create flow $f's data"
        sums="$sums tx_sha256_$f=$(sha256sum </tmp/tx$f | cut -d' ' -f1)"
    done
    for f in $(seq 0 $((F - 1))); do
        ( tries=0
          until taskset -c $((f % 2)) nc -w 30 "$PEER" $((PORT + f)) </tmp/tx$f >/dev/null 2>/tmp/nc$f.err; do
              tries=$((tries + 1)); [ $tries -ge 30 ] && exit 1; sleep 1
          done ) &
        eval "pid$f=\$!"
    done
    for f in $(seq 0 $((F - 1))); do
        eval "wait \$pid$f" || res "FAIL flow $f: nc to $PEER:$((PORT + f)) failed: $(cat /tmp/nc$f.err)"
    done
    pq=$(per_queue)
    echo "SBNET-INFO: mq-client per-queue packets: $pq"
    res "PASS flows=$F bytes=$per $pq$sums"
    ;;
router)
    [ -n "$IF2" ] || res "FAIL the router role needs two sbnet NICs (sbnet.ip2)"
    echo 1 >/proc/sys/net/ipv4/ip_forward || res "FAIL cannot enable ip_forward"
    a=/sys/class/net/$IF/statistics b=/sys/class/net/$IF2/statistics
    echo "SBNET-INFO: router: forwarding between $IF and $IF2, waiting for $BYTES bytes on $IF"
    last='' quiet=0
    while :; do
        in=$(cat $a/rx_bytes)
        cur="$(cat $a/rx_packets) $(cat $b/rx_packets)"
        echo " router: $in of $BYTES bytes in on $IF" >/tmp/doing
        if [ "$cur" = "$last" ]; then quiet=$((quiet + 1)); else quiet=0; fi
        last=$cur
        [ "$in" -ge "$BYTES" ] && [ $quiet -ge 30 ] && break
        sleep 0.1
    done
    res "PASS fwd_a_to_c=$(cat $b/tx_packets) fwd_c_to_a=$(cat $a/tx_packets) in_a_bytes=$in"
    ;;
count-rx)
    [ -n "$PEER" ] && [ -n "$PEERMAC" ] || res "FAIL count-rx needs sbnet.peer and sbnet.peermac"
    s=/sys/class/net/$IF/statistics
    arp -i "$IF" -s "$PEER" "$PEERMAC" || res "FAIL arp -s $PEER $PEERMAC failed"
    rx0=$(cat $s/rx_packets)
    echo "SBNET-INFO: count-rx: pinging $PEER ($PEERMAC) until the first frame arrives (rx_packets=$rx0)"
    t0=$(now) pings=0
    while [ "$(cat $s/rx_packets)" = "$rx0" ]; do
        echo " waiting for the first frame, $pings pings sent" >/tmp/doing
        ping -c 1 -W 1 "$PEER" >/dev/null 2>&1 &
        pings=$((pings + 1))
        sleep 0.5
    done
    echo "SBNET-INFO: count-rx: first frame after $pings pings, $(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s"
    last=-1 quiet=0
    while [ $quiet -lt 50 ]; do
        got=$(( $(cat $s/rx_packets) - rx0 ))
        echo " receiving, $got frames" >/tmp/doing
        if [ "$got" = "$last" ]; then quiet=$((quiet + 1)); else quiet=0; fi
        last=$got
        sleep 0.1
    done
    res "PASS rx_packets=$last pings=$pings rx_dropped=$(cat $s/rx_dropped) rx_errors=$(cat $s/rx_errors)"
    ;;
idle)
    res "PASS idle"
    ;;
*)
    res "FAIL unknown role '$ROLE'"
    ;;
esac
