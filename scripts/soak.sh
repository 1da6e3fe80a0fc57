#!/usr/bin/env bash
# Soak test of host-pair (issue 9): N minutes (default 30) of full-rate
# traffic, a hostile client and kill -9 on both sides, then checks.
#
#   scripts/soak.sh [--minutes N] [--keep]
#
# Side A (first socket): sbnet-testpmd, txonly or io, killed with kill -9
# every 1-5 s and restarted. Side B: alternately a receiving sbnet-testpmd
# and sbnet-hostile (malformed chains, register abuse, bad DMA maps, bad
# SET_IRQS, broken rings, mixed with classic traffic), also killed with
# kill -9 every 1-5 s. Before and after the chaos a clean pair of testpmds
# moves a fixed number of frames and exits normally; host-pair's fd count,
# thread count and RSS are sampled idle after each. At the end:
#   - host-pair is alive and never logged a panic;
#   - host-pair's ledger is whole (owned by side 0 + side 1 + nobody =
#     slots, every post and deferral consistent) and so is each final
#     testpmd's (free + held + in flight + peer-owned = total);
#   - the final clean pair delivered every frame, without integrity errors;
#   - fds, threads and mappings are as at the start (none more); private
#     RSS (anon + file) grew by at most 10% or 1 MiB, whichever is larger
#     (allocator noise); shared RSS (shmem) is at most the region's size:
#     the region's pages fault in as the switch copies through slots, and
#     guest memory must all be unmapped once the clients are gone.
# Prints a report block; exit status 0 when every check passed, 1 otherwise.
# Runs as root or not; needs cargo, jq and /proc. Not part of CI.
set -uo pipefail
cd "$(dirname "$0")/.."

MINUTES=30
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
    --minutes) MINUTES="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "usage: $0 [--minutes N] [--keep]" >&2; exit 2 ;;
    esac
done
case "$MINUTES" in
'' | *[!0-9.]*) echo "soak: --minutes takes a number" >&2; exit 2 ;;
esac
for tool in cargo jq; do
    command -v "$tool" >/dev/null 2>&1 || {
        case "$tool" in
        jq) echo "soak: jq not found: install it (Debian: apt-get install jq) and retry" >&2 ;;
        *) echo "soak: cargo not found: install Rust with rustup (https://rustup.rs) and retry" >&2 ;;
        esac
        exit 2
    }
done

echo "soak: building release binaries..." >&2
cargo build --release --quiet -p host-pair -p sbnet-testpmd --bins || exit 2
cargo build --release --quiet -p sbnet-tests --bin sbnet-hostile || exit 2
BIN=${CARGO_TARGET_DIR:-target}/release
HOSTPAIR=$BIN/host-pair
TESTPMD=$BIN/sbnet-testpmd
HOSTILE=$BIN/sbnet-hostile

DIR=$(mktemp -d "${TMPDIR:-/tmp}/sbnet-soak.XXXXXX")
SA=$DIR/a.sock
SB=$DIR/b.sock
CLEAN_FRAMES=200000
SLOTS=512
SLOT_SIZE=2048
REGION_KB=$((SLOTS * SLOT_SIZE / 1024))
HP=""
cleanup() {
    touch "$DIR/stop"
    # The chaos loops stop on their own within 5 s; on an early exit take
    # their clients down first (children of this script's jobs only).
    for p in $(jobs -p); do pkill -9 -P "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
    [ -n "$HP" ] && kill -9 "$HP" 2>/dev/null
    wait 2>/dev/null
    [ "$KEEP" = 1 ] && echo "soak: logs kept in $DIR" >&2 || rm -rf "$DIR"
}
trap cleanup EXIT

"$HOSTPAIR" serve --socket "$SA" --socket "$SB" --slots $SLOTS --slot-size $SLOT_SIZE \
    --stats-json "$DIR/stats.json" \
    --stats-interval 10 2>"$DIR/host-pair.log" &
HP=$!
for _ in $(seq 100); do [ -S "$SA" ] && [ -S "$SB" ] && break; sleep 0.1; done
[ -S "$SA" ] && [ -S "$SB" ] || { echo "soak: host-pair did not start" >&2; cat "$DIR/host-pair.log" >&2; exit 1; }

# fd count, thread count, mappings and RSS (kB) of host-pair: private
# (anon + file) and shared memory (shmem: the region's touched pages, and
# any guest memory still mapped) apart.
sample() {
    local fds maps
    fds=$(ls "/proc/$HP/fd" 2>/dev/null | wc -l)
    maps=$(wc -l <"/proc/$HP/maps" 2>/dev/null)
    awk -v fds="$fds" -v maps="${maps:-0}" '
        /^Threads:/ {t = $2} /^VmRSS:/ {r = $2} /^RssAnon:/ {a = $2}
        /^RssFile:/ {f = $2} /^RssShmem:/ {s = $2}
        END {print fds, t + 0, r + 0, a + f, s + 0, maps}' "/proc/$HP/status" 2>/dev/null ||
        echo "0 0 0 0 0 0"
}

# Waits (up to 10 s) until host-pair has no client: its fd count stops
# moving for a second.
settle() {
    local last="" now
    for _ in $(seq 20); do
        sleep 0.5
        now=$(sample | cut -d' ' -f1,6)
        [ "$now" = "$last" ] && return
        last=$now
    done
}

# A clean pair: txonly on A, rxonly on B, $1 frames, both exit normally.
# Writes $DIR/clean-$2-{tx,rx}.json; returns non-zero when either failed.
clean_pair() {
    local n=$1 tag=$2 tx rx rc=0
    "$TESTPMD" --socket "$SA" --mode txonly --count "$n" --linger 60 --stats-interval 0 \
        --json "$DIR/clean-$tag-tx.json" 2>"$DIR/clean-$tag-tx.log" &
    tx=$!
    sleep 1
    "$TESTPMD" --socket "$SB" --mode rxonly --count "$n" --stats-interval 0 \
        --json "$DIR/clean-$tag-rx.json" 2>"$DIR/clean-$tag-rx.log" &
    rx=$!
    wait "$rx" || rc=1
    wait "$tx" || rc=1
    return $rc
}

# A side under kill -9: starts its next client, kills it after 1-5 s, counts.
chaos() {
    local side=$1 sock=$2 i=0 pid mode
    while [ ! -e "$DIR/stop" ]; do
        if [ "$side" = a ]; then
            if [ $((RANDOM % 10)) -lt 7 ]; then mode=txonly; else mode=io; fi
            "$TESTPMD" --socket "$sock" --mode $mode --stats-interval 0 --idle-timeout 60 \
                --peer-timeout 60 2>>"$DIR/chaos-a.log" &
        elif [ $((i % 2)) = 0 ]; then
            "$TESTPMD" --socket "$sock" --mode rxonly --stats-interval 0 --idle-timeout 60 \
                --peer-timeout 60 2>>"$DIR/chaos-b.log" &
        else
            "$HOSTILE" --socket "$sock" --seed $((RANDOM * 32768 + RANDOM)) \
                >>"$DIR/hostile.out" 2>>"$DIR/hostile.log" &
        fi
        pid=$!
        sleep "$((RANDOM % 4 + 1)).$((RANDOM % 10))"
        if kill -9 "$pid" 2>/dev/null; then
            echo "$i" >>"$DIR/kills-$side"
        else
            echo "$i" >>"$DIR/exits-$side"
        fi
        wait "$pid" 2>/dev/null
        i=$((i + 1))
    done
}

# A clean pair tagged $1, then an idle sample in $DIR/sample-$1; prints 1
# when the pair passed, 0 otherwise.
clean_phase() {
    local ok=1
    clean_pair "$CLEAN_FRAMES" "$1" || ok=0
    settle
    sample >"$DIR/sample-$1"
    echo $ok
}

echo "soak: warm-up (a clean pair of $CLEAN_FRAMES frames)..." >&2
WARM_OK=$(clean_phase warm)
read -r FD0 TH0 RSS0 PRIV0 SHM0 MAPS0 <"$DIR/sample-warm"

echo "soak: $MINUTES minutes of traffic, abuse and kill -9 (logs in $DIR)..." >&2
START=$(date +%s)
chaos a "$SA" &
CA=$!
chaos b "$SB" &
CB=$!
END=$((START + $(awk -v m="$MINUTES" 'BEGIN {printf "%d", m * 60}')))
while [ "$(date +%s)" -lt "$END" ]; do
    kill -0 "$HP" 2>/dev/null || break
    sleep 5
done
touch "$DIR/stop"
wait "$CA" "$CB" 2>/dev/null
ELAPSED=$(($(date +%s) - START))
settle

echo "soak: final clean pair..." >&2
FINAL_OK=$(clean_phase final)
read -r FD1 TH1 RSS1 PRIV1 SHM1 MAPS1 <"$DIR/sample-final"

# The ledger as host-pair sees it now (idle): ask for a report.
ALIVE=1
kill -0 "$HP" 2>/dev/null || ALIVE=0
if [ "$ALIVE" = 1 ]; then
    kill -USR1 "$HP"
    sleep 1
    cp "$DIR/stats.json" "$DIR/stats-idle.json" 2>/dev/null
    kill -TERM "$HP"
    HP_RC=0
    wait "$HP" || HP_RC=$?
    HP=""
else
    HP_RC=dead
fi

# --- checks ---
FAIL=()
check() { if [ "$2" = 1 ]; then echo "  ok    $1"; else echo "  FAIL  $1"; FAIL+=("$1"); fi; }
jqn() { jq -r "$1" "$2" 2>/dev/null || echo "?"; }
S=$DIR/stats.json
count() { [ -f "$1" ] && wc -l <"$1" || echo 0; }
KA=$(count "$DIR/kills-a")
KB=$(count "$DIR/kills-b")
PANICS=$(grep -ci "panick" "$DIR/host-pair.log")
PRIV_LIMIT=$((PRIV0 + (PRIV0 / 10 > 1024 ? PRIV0 / 10 : 1024)))

{
    echo "==== sbnet soak report ===="
    echo "minutes: $MINUTES (chaos ran $ELAPSED s)"
    echo "kill -9: side A $KA, side B $KB (clients that exited on their own: A $(count "$DIR/exits-a"), B $(count "$DIR/exits-b"))"
    echo "frames moved (host-pair counters): side 0 tx $(jqn '.sides[0].tx_packets' "$S") rx $(jqn '.sides[0].rx_packets' "$S"), side 1 tx $(jqn '.sides[1].tx_packets' "$S") rx $(jqn '.sides[1].rx_packets' "$S")"
    for k in 0 1; do
        echo "side $k refusals: $(jqn ".sides[$k] | \"\(.refusals) (\([\"bad_chain\",\"bad_slot_ref\",\"tx_not_owner\",\"rx_post_not_peer_owned\",\"rx_post_duplicate\",\"frame_too_big\",\"bad_gift\"] as \$r | to_entries | map(select(.key as \$k | \$r | index(\$k)) | select(.value > 0) | \"\(.key) \(.value)\") | join(\", \"))); dma_refused \(.dma_refused), needs_reset \(.needs_reset), resets \(.resets)\"" "$S")"
    done
    echo "final epoch: $(jqn '.epoch' "$S")"
    echo "host-pair fds $FD0 -> $FD1, threads $TH0 -> $TH1, mappings $MAPS0 -> $MAPS1, RSS $RSS0 -> $RSS1 kB (private $PRIV0 -> $PRIV1 kB, limit $PRIV_LIMIT; shared $SHM0 -> $SHM1 kB, region $REGION_KB kB)"
    echo "host ledger: $(jqn '.ledger | "side 0 owns \(.sides[0].owned), side 1 owns \(.sides[1].owned), nobody \(.nobody): total \(.total) of \(.slots) slots, whole \(.whole)"' "$S")"
    for s in tx rx; do
        echo "final testpmd $s ledger: $(jqn '.ledger | "free \(.free) + held \(.held) + in flight \(.in_flight_tx) + peer-owned \(.peer_owned) = \(.sum) of \(.total), whole \(.whole)"' "$DIR/clean-final-$s.json")"
    done
    echo "final clean pair: sent $(jqn '.tx_packets' "$DIR/clean-final-tx.json"), received $(jqn '.rx_packets' "$DIR/clean-final-rx.json") of $CLEAN_FRAMES, integrity errors $(jqn '.integrity_errors' "$DIR/clean-final-rx.json"), mode $(jqn '.port.mode' "$DIR/clean-final-rx.json")"
    echo "checks:"
    check "host-pair alive through the soak and exited cleanly on SIGTERM (status $HP_RC)" "$([ "$ALIVE" = 1 ] && [ "$HP_RC" = 0 ] && echo 1)"
    check "host-pair never logged a panic ($PANICS)" "$([ "$PANICS" = 0 ] && echo 1)"
    check "warm-up clean pair passed" "$WARM_OK"
    check "final clean pair passed (every frame, no integrity error)" "$([ "$FINAL_OK" = 1 ] && [ "$(jqn '.rx_packets' "$DIR/clean-final-rx.json")" = "$CLEAN_FRAMES" ] && echo 1)"
    check "host ledger whole" "$([ "$(jqn '.ledger.whole' "$S")" = true ] && [ "$(jqn '.ledger.whole' "$DIR/stats-idle.json")" = true ] && echo 1)"
    check "final testpmd ledgers whole (both sides)" "$([ "$(jqn '.ledger.whole' "$DIR/clean-final-tx.json")" = true ] && [ "$(jqn '.ledger.whole' "$DIR/clean-final-rx.json")" = true ] && echo 1)"
    check "both sides were killed with kill -9" "$([ "$KA" -gt 0 ] && [ "$KB" -gt 0 ] && echo 1)"
    check "fds did not grow ($FD0 -> $FD1)" "$([ "$FD1" -le "$FD0" ] && echo 1)"
    check "threads did not grow ($TH0 -> $TH1)" "$([ "$TH1" -le "$TH0" ] && echo 1)"
    check "mappings did not grow ($MAPS0 -> $MAPS1)" "$([ "$MAPS1" -le "$MAPS0" ] && echo 1)"
    check "private RSS within +10% / 1 MiB ($PRIV0 -> $PRIV1 kB)" "$([ "$PRIV1" -le "$PRIV_LIMIT" ] && echo 1)"
    check "shared RSS within the region, no guest memory left mapped ($SHM1 <= $REGION_KB kB)" "$([ "$SHM1" -le "$REGION_KB" ] && echo 1)"
    if [ ${#FAIL[@]} = 0 ]; then echo "result: PASS"; else echo "result: FAIL (${#FAIL[@]} checks)"; fi
    echo "==========================="
} >"$DIR/report.txt"
cat "$DIR/report.txt"
[ ${#FAIL[@]} = 0 ] || KEEP=1
[ ${#FAIL[@]} = 0 ]
