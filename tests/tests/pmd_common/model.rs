//! What the model-based tests (`pmd_model`, `pmd_model_mq`) share: frame
//! lengths, and a seeded proptest run of action sequences.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use std::fmt::Debug;

use super::FRAME_HDR;

/// Frame length for packet `i` of a send whose lengths `seed` picks, for
/// frames of at most `max_frame` bytes.
pub fn frame_len(seed: u16, i: usize, max_frame: usize) -> usize {
    let r = (seed as usize)
        .wrapping_mul(2654435761)
        .wrapping_add(i * 40503)
        >> 3;
    match (seed as usize + i) % 5 {
        0 => FRAME_HDR + r % 58,
        1 => 60 + r % 1455,
        2 => max_frame,
        3 => FRAME_HDR,
        _ => FRAME_HDR + r % (max_frame - FRAME_HDR + 1),
    }
}

/// A number from the environment.
pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

/// Runs `case` on `cases` sequences of 1 to `max_len - 1` actions,
/// seeded: the same cases every time unless `SBNET_MODEL_SEED` (a number)
/// says otherwise; `SBNET_MODEL_CASES` overrides the count. Panics with
/// the shrunk failing sequence, labelled `what`.
pub fn run_seeded<A: Debug + Clone + 'static>(
    what: &dyn Debug,
    cases: u32,
    action: impl Strategy<Value = A>,
    max_len: usize,
    case: impl Fn(&[A]) -> Result<(), String>,
) {
    let rng = match env_u64("SBNET_MODEL_SEED") {
        Some(seed) => {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&seed.to_le_bytes());
            TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
        }
        None => TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    };
    let config = Config {
        cases: env_u64("SBNET_MODEL_CASES").map_or(cases, |c| c as u32),
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, rng);
    let res = runner.run(&proptest::collection::vec(action, 1..max_len), |actions| {
        case(&actions).map_err(TestCaseError::fail)
    });
    match res {
        Ok(()) => {}
        Err(TestError::Fail(why, actions)) => panic!(
            "{what:?}: {why}\nminimal failing sequence ({} steps): {actions:#?}",
            actions.len()
        ),
        Err(e) => panic!("{what:?}: {e}"),
    }
}

/// A port's (or queue pair's) stats after a clean run: no stale handle,
/// no refused completion, no misbehaving device.
pub fn check_clean(what: &str, st: &sbnet_pmd::Stats) -> Result<(), String> {
    if st.stale_handles != 0 || st.refused_completions != 0 || st.device_misbehaved != 0 {
        return Err(format!("{what}: port stats: {}", st.to_json()));
    }
    Ok(())
}
