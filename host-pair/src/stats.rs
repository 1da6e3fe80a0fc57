//! Counter reports: a human line per side, and JSON for scripts. Both carry
//! the host's slot ledger summary ([`Ledger`]).

use sbnet_device::pair::Pair;
use sbnet_device::switch::{Switch, NOBODY};

/// One side's share of the host ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SideLedger {
    /// Slots the side owns (`Switch::owners`).
    owned: usize,
    /// Of those: posted on the peer's RX queue, waiting for this side's TX.
    on_peer_rx: usize,
    /// Of those: delivered to this side but deferred until it posts them.
    deferred: usize,
    /// Of those: with the side's driver (free, held, or on its TX queue).
    with_driver: usize,
    /// Slots this side posted on its RX queue (owned by the peer).
    posted_rx: usize,
    /// A TX of this side waits for the peer's RX buffer (0 or 1 descriptor).
    tx_waiting: bool,
    /// Entries that break the ledger rules: a post of a slot the peer does
    /// not own, or a deferred delivery of a slot this side does not own or
    /// has posted. Always 0 unless the switch has a bug.
    inconsistent: usize,
}

/// The host ledger: each side's share, the unowned slots and the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ledger {
    sides: [SideLedger; 2],
    nobody: usize,
    slots: usize,
}

impl Ledger {
    fn of(sw: &Switch) -> Self {
        let own = sw.owners();
        let posted: [Vec<u32>; 2] = [sw.posted(0).collect(), sw.posted(1).collect()];
        let sides = [0, 1].map(|k| {
            let peer = (1 - k) as u8;
            let owned = own.iter().filter(|&&o| o == k as u8).count();
            let deferred: Vec<u32> = sw.deferred(k).collect();
            let on_peer_rx = posted[1 - k].len();
            let bad_posts = posted[k]
                .iter()
                .filter(|&&s| own.get(s as usize) != Some(&peer))
                .count();
            let bad_deferred = deferred
                .iter()
                .filter(|&&s| own.get(s as usize) != Some(&(k as u8)) || posted[k].contains(&s))
                .count();
            SideLedger {
                owned,
                on_peer_rx,
                deferred: deferred.len(),
                with_driver: owned.saturating_sub(on_peer_rx + deferred.len()),
                posted_rx: posted[k].len(),
                tx_waiting: sw.waiting(k),
                inconsistent: bad_posts + bad_deferred,
            }
        });
        Self {
            sides,
            nobody: own.iter().filter(|&&o| o == NOBODY).count(),
            slots: own.len(),
        }
    }

    /// Owned by side 0 + owned by side 1 + owned by nobody.
    fn total(&self) -> usize {
        self.sides[0].owned + self.sides[1].owned + self.nobody
    }

    /// The total is the slot count and no entry breaks the rules.
    fn whole(&self) -> bool {
        self.total() == self.slots
            && self
                .sides
                .iter()
                .all(|s| s.inconsistent == 0 && s.on_peer_rx + s.deferred <= s.owned)
    }

    fn json(&self) -> serde_json::Value {
        let side = |s: &SideLedger| {
            serde_json::json!({
                "owned": s.owned,
                "on_peer_rx": s.on_peer_rx,
                "deferred": s.deferred,
                "with_driver": s.with_driver,
                "posted_rx": s.posted_rx,
                "tx_waiting": s.tx_waiting as u8,
                "inconsistent": s.inconsistent,
            })
        };
        serde_json::json!({
            "sides": [side(&self.sides[0]), side(&self.sides[1])],
            "nobody": self.nobody,
            "total": self.total(),
            "slots": self.slots,
            "whole": self.whole(),
        })
    }
}

impl std::fmt::Display for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, s) in self.sides.iter().enumerate() {
            write!(
                f,
                "side {k} owns {} (with driver {}, on peer RX {}, deferred {}; posted RX {}, TX waiting {}) | ",
                s.owned, s.with_driver, s.on_peer_rx, s.deferred, s.posted_rx, s.tx_waiting as u8
            )?;
        }
        write!(
            f,
            "nobody {} | total {} of {} slots: {}",
            self.nobody,
            self.total(),
            self.slots,
            if self.whole() { "whole" } else { "BROKEN" }
        )
    }
}

/// Prints link `name`'s epoch, mode, each side's non-zero counters and
/// the ledger to stderr, a line each.
pub fn print(name: &str, p: &Pair) {
    eprintln!(
        "host-pair: link {name}: epoch {} mode {:?}",
        p.epoch(),
        p.switch.mode()
    );
    for (k, f) in p.fns.iter().enumerate() {
        eprintln!("host-pair: link {name}: side {k}: {}", f.counters);
    }
    eprintln!("host-pair: link {name}: ledger: {}", Ledger::of(&p.switch));
}

/// Link `name`'s object: its name, then [`json`]'s fields.
pub fn link_json(name: &str, p: &Pair) -> serde_json::Value {
    let mut v = json(p);
    if let Some(o) = v.as_object_mut() {
        o.insert("name".into(), name.into());
    }
    v
}

/// The `--stats-json` document: `links`, one [`link_json`] object each;
/// when exactly one link is served, that link's fields also at the top
/// level (what scripts read from a one-link host-pair).
pub fn document(links: Vec<serde_json::Value>) -> serde_json::Value {
    let mut doc = serde_json::Map::new();
    if let [one] = links.as_slice() {
        if let Some(o) = one.as_object() {
            doc.extend(
                o.iter()
                    .filter(|(k, _)| *k != "name")
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
    }
    doc.insert("links".into(), links.into());
    doc.into()
}

/// Every counter of both sides as JSON, plus each side's `refusals`: the
/// sum of the refusal counters (`SideCounters::REFUSALS`) and `queues`:
/// frames and bytes per queue pair (`QueueCounters`), and the host
/// ledger summary (`ledger`: per side `owned` = `with_driver` +
/// `on_peer_rx` + `deferred`; `total` = owned by both + `nobody`, `whole`
/// when it equals `slots` and every post and deferral is consistent).
fn json(p: &Pair) -> serde_json::Value {
    let sides: Vec<serde_json::Value> = p
        .fns
        .iter()
        .map(|f| {
            let c = &f.counters;
            let mut side: serde_json::Map<String, serde_json::Value> = c
                .fields()
                .chain([("refusals", c.refusals())])
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            let queues: Vec<serde_json::Value> = f
                .queue_counters()
                .iter()
                .map(|q| {
                    serde_json::Value::Object(
                        q.fields()
                            .iter()
                            .map(|(k, v)| (k.to_string(), (*v).into()))
                            .collect(),
                    )
                })
                .collect();
            side.insert("queues".into(), queues.into());
            serde_json::Value::Object(side)
        })
        .collect();
    serde_json::json!({
        "epoch": p.epoch(),
        "mode": format!("{:?}", p.switch.mode()),
        "sides": sides,
        "ledger": Ledger::of(&p.switch).json(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sbnet_abi::shm::SlotGeometry;
    use sbnet_device::switch::SwitchConfig;

    #[test]
    fn a_fresh_switch_is_whole_and_unowned() {
        let sw = Switch::new(
            SwitchConfig::default(),
            SlotGeometry::new(2048, 64).unwrap(),
            256,
        );
        let l = Ledger::of(&sw);
        assert_eq!(l.nobody, 64);
        assert_eq!(l.total(), 64);
        assert!(l.whole());
        let j = l.json();
        assert_eq!(j["whole"], true);
        assert_eq!(j["slots"], 64);
        assert!(l.to_string().ends_with("total 64 of 64 slots: whole"));
    }

    #[test]
    fn one_link_also_at_the_top_level() {
        let a = serde_json::json!({"name": "a", "epoch": 3});
        let b = serde_json::json!({"name": "b", "epoch": 4});
        let one = document(vec![a.clone()]);
        assert_eq!(one["epoch"], 3);
        assert!(one.get("name").is_none());
        assert_eq!(one["links"][0], a);
        let two = document(vec![a, b]);
        assert!(two.get("epoch").is_none());
        assert_eq!(two["links"][1]["name"], "b");
    }

    #[test]
    fn a_missing_slot_is_not_whole() {
        let mut l = Ledger::of(&Switch::new(
            SwitchConfig::default(),
            SlotGeometry::new(2048, 8).unwrap(),
            256,
        ));
        l.nobody -= 1;
        assert!(!l.whole());
        l.nobody += 1;
        l.sides[1].inconsistent = 1;
        assert!(!l.whole());
    }
}
