//! The host ledger invariant, checked after every step by the hostile-guest
//! proptest (`hostile_tests.rs`) and the `switch_ledger` fuzz target.

use crate::pair::Pair;
use crate::switch::{Mode, NOBODY};

/// Panics unless the switch's ledger is whole:
///
/// - every slot has exactly one owner (side 0, side 1, or [`NOBODY`] in
///   copy mode without a shared-buffers side), and in zero-copy mode never
///   [`NOBODY`] (no slot is lost);
/// - a slot posted on side `k`'s RX queue has an owner: the peer (it is on
///   its way to `k`) or `k` itself (an early post of a slot `k` is
///   sending, `SB_F_EARLY_POST`);
/// - a delivery deferred to side `k` is for a slot `k` already owns and has
///   not posted;
/// - in copy mode nothing is posted and nothing deferred (slots do not
///   change hands).
pub fn check_ledger(p: &Pair) {
    let owners = p.switch.owners();
    let zero_copy = p.switch.mode() == Mode::ZeroCopy;
    for (s, &o) in owners.iter().enumerate() {
        assert!(o <= NOBODY, "slot {s} has owner {o}");
        assert!(
            !zero_copy || o != NOBODY,
            "slot {s} has no owner in zero-copy mode"
        );
    }
    for k in 0..2 {
        let posted: Vec<u32> = p.switch.posted(k).collect();
        let deferred: Vec<u32> = p.switch.deferred(k).collect();
        assert!(
            zero_copy || (posted.is_empty() && deferred.is_empty()),
            "copy mode, yet side {k} has slots {posted:?} posted and {deferred:?} deferred"
        );
        for &s in &posted {
            assert_ne!(
                owners[s as usize], NOBODY,
                "side {k} has unowned slot {s} posted"
            );
        }
        for &s in &deferred {
            assert_eq!(
                owners[s as usize], k as u8,
                "deferred slot {s} not owned by its receiver {k}"
            );
            assert!(
                !posted.contains(&s),
                "slot {s} both posted on and deferred to side {k}"
            );
        }
    }
}
