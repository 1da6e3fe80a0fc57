//! Counter reports: a human line per side, and JSON for scripts.

use sbnet_device::pair::Pair;

/// Prints the epoch, the mode and each side's non-zero counters to stderr.
pub fn print(p: &Pair) {
    eprintln!("host-pair: epoch {} mode {:?}", p.epoch(), p.switch.mode());
    for (k, f) in p.fns.iter().enumerate() {
        eprintln!("host-pair: side {k}: {}", f.counters);
    }
}

/// Every counter of both sides as JSON, plus each side's `refusals`: the
/// sum of the refusal counters (`SideCounters::REFUSALS`).
pub fn json(p: &Pair) -> serde_json::Value {
    let sides: Vec<serde_json::Value> = p
        .fns
        .iter()
        .map(|f| {
            let c = &f.counters;
            serde_json::Value::Object(
                c.fields()
                    .chain([("refusals", c.refusals())])
                    .map(|(k, v)| (k.to_string(), v.into()))
                    .collect(),
            )
        })
        .collect();
    serde_json::json!({
        "epoch": p.epoch(),
        "mode": format!("{:?}", p.switch.mode()),
        "sides": sides,
    })
}
