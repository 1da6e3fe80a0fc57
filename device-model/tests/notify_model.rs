//! Model check of the two notification handshakes of a split virtqueue
//! (virtio 1.2 §2.7.10, the store-buffering case), with `loom` exploring
//! every interleaving and every value each load may legally return.
//!
//! Both handshakes have the same shape. A *producer* publishes an index and
//! then reads the *waiter*'s suppression flag to decide whether to notify;
//! the waiter, about to sleep, clears its flag and then re-reads the index.
//! A lost wakeup is: the waiter saw no new index (so it sleeps) and the
//! producer saw the flag still set (so it did not notify).
//!
//! | handshake | producer | index | waiter | flag |
//! |---|---|---|---|---|
//! | interrupts | device (`Queue::publish`) | `used.idx` | driver re-enabling interrupts | `avail.flags` `NO_INTERRUPT` |
//! | kicks | driver (the PMD's `SplitQueue::publish`, `full_barrier`, `SplitQueue::wants_notify`) | `avail.idx` | device about to sleep (`Queue::set_no_notify(false)`) | `used.flags` `NO_NOTIFY` |
//!
//! The orderings below are the ones the code uses: index stores Release,
//! flag stores Relaxed, index loads Acquire, flag loads Relaxed, and a
//! `fence(SeqCst)` between each side's store and its load.

use loom::sync::atomic::{fence, AtomicBool, AtomicU16, Ordering};
use loom::sync::Arc;
use loom::thread;

/// Runs the handshake under loom; `fenced` puts the full fences in.
/// Panics (inside the model) on a lost wakeup.
fn handshake(fenced: bool) {
    loom::model(move || {
        let index = Arc::new(AtomicU16::new(0));
        // Set: the waiter is polling and asked not to be notified.
        let flag = Arc::new(AtomicU16::new(1));
        let notified = Arc::new(AtomicBool::new(false));

        let producer = {
            let (index, flag, notified) = (index.clone(), flag.clone(), notified.clone());
            thread::spawn(move || {
                // Publish one entry (used.idx / avail.idx).
                index.store(1, Ordering::Release);
                if fenced {
                    fence(Ordering::SeqCst);
                }
                if flag.load(Ordering::Relaxed) == 0 {
                    notified.store(true, Ordering::Relaxed);
                }
            })
        };

        // The waiter: clear the suppression flag, then look once more.
        flag.store(0, Ordering::Relaxed);
        if fenced {
            fence(Ordering::SeqCst);
        }
        let saw_work = index.load(Ordering::Acquire) != 0;
        producer.join().unwrap();
        assert!(
            saw_work || notified.load(Ordering::Relaxed),
            "lost wakeup: the waiter sleeps and nobody notifies it"
        );
    });
}

#[test]
fn with_full_fences_no_wakeup_is_lost() {
    handshake(true);
}

/// The model is not vacuous: without the fences loom finds the lost
/// wakeup that x86's store buffer allows.
#[test]
fn without_the_fences_a_wakeup_can_be_lost() {
    let r = std::panic::catch_unwind(|| handshake(false));
    assert!(r.is_err(), "loom found no lost wakeup without fences");
}
