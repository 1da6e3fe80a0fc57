//! The Prometheus text exposition of the links' counters (`--metrics-file`,
//! for node-exporter's textfile collector). Built from the same per-link
//! JSON objects as `--stats-json` and `ctl stats`, so the two always agree.
//! Written atomically: a temporary file in the same directory, renamed.

use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// A metric family: name, type, help, and how a side's JSON fills it.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    /// (JSON key in a side's counters, extra label) pairs.
    from: &'static [(&'static str, &'static str)],
}

/// Side counters renamed into families with a `dir` or `path` label; every
/// other side counter `x` becomes `sbnet_x_total`.
const SHAPED: &[Family] = &[
    Family {
        name: "sbnet_packets_total",
        kind: "counter",
        help: "Frames this side sent that reached the peer (dir=tx) or that were delivered to it (dir=rx).",
        from: &[("tx_packets", "dir=\"tx\""), ("rx_packets", "dir=\"rx\"")],
    },
    Family {
        name: "sbnet_bytes_total",
        kind: "counter",
        help: "Frame bytes (virtio-net header excluded) sent (dir=tx) or delivered (dir=rx).",
        from: &[("tx_bytes", "dir=\"tx\""), ("rx_bytes", "dir=\"rx\"")],
    },
    Family {
        name: "sbnet_tx_path_total",
        kind: "counter",
        help: "Frames sent, by how the host handed them over: slot to slot (path=zero_copy) or copied (path=copied).",
        from: &[
            ("tx_zero_copy", "path=\"zero_copy\""),
            ("tx_copied", "path=\"copied\""),
        ],
    },
    Family {
        name: "sbnet_dma_maps_peak",
        kind: "gauge",
        help: "Most vfio-user DMA maps this side held at once.",
        from: &[("dma_maps_peak", "")],
    },
];

/// Ledger fields per side, exported as gauges `sbnet_ledger_<x>`.
const LEDGER_SIDE: &[(&str, &str)] = &[
    ("owned", "Slots the side owns."),
    ("with_driver", "Of the owned slots: with the side's driver."),
    (
        "on_peer_rx",
        "Of the owned slots: posted on the peer's RX queue.",
    ),
    ("deferred", "Of the owned slots: delivered but deferred."),
    ("posted_rx", "Slots the side posted on its RX queue."),
];

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn num(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_bool().map(u64::from))
        .unwrap_or(0)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[&str], v: u64) {
    let labels: Vec<&str> = labels.iter().copied().filter(|l| !l.is_empty()).collect();
    let _ = writeln!(out, "{name}{{{}}} {v}", labels.join(","));
}

/// The exposition of `links` (objects of `stats::link_json`).
pub fn render(links: &[Value]) -> String {
    let mut out = String::new();
    let named: Vec<(String, &Value)> = links
        .iter()
        .map(|l| {
            (
                format!("link=\"{}\"", escape(l["name"].as_str().unwrap_or(""))),
                l,
            )
        })
        .collect();
    let sides = |l: &Value| -> Vec<(String, Value)> {
        l["sides"]
            .as_array()
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(k, s)| (format!("side=\"{k}\""), s.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    header(&mut out, "sbnet_links", "gauge", "Links served.");
    let _ = writeln!(out, "sbnet_links {}", links.len());
    header(
        &mut out,
        "sbnet_epoch",
        "gauge",
        "The link's pairing epoch (changes when a side resets or its driver comes and goes).",
    );
    for (ll, l) in &named {
        sample(&mut out, "sbnet_epoch", &[ll], num(&l["epoch"]));
    }
    header(
        &mut out,
        "sbnet_zero_copy",
        "gauge",
        "1 when both sides negotiated Shared Buffers (mode ZeroCopy), 0 in copy mode.",
    );
    for (ll, l) in &named {
        let zc = l["mode"].as_str() == Some("ZeroCopy");
        sample(&mut out, "sbnet_zero_copy", &[ll], u64::from(zc));
    }
    for f in SHAPED {
        header(&mut out, f.name, f.kind, f.help);
        for (ll, l) in &named {
            for (sl, s) in sides(l) {
                for (key, extra) in f.from {
                    sample(&mut out, f.name, &[ll, &sl, extra], num(&s[*key]));
                }
            }
        }
    }
    // Every other side counter, in the JSON's order.
    let shaped: Vec<&str> = SHAPED
        .iter()
        .flat_map(|f| f.from.iter().map(|(k, _)| *k))
        .collect();
    let keys: Vec<String> = links
        .first()
        .and_then(|l| l["sides"][0].as_object())
        .map(|o| {
            o.iter()
                .filter(|(k, v)| v.is_u64() && !shaped.contains(&k.as_str()))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    for key in keys {
        let name = format!("sbnet_{key}_total");
        header(
            &mut out,
            &name,
            "counter",
            &format!("The side counter {key} (docs/operator-guide.md, \"Counters\")."),
        );
        for (ll, l) in &named {
            for (sl, s) in sides(l) {
                sample(&mut out, &name, &[ll, &sl], num(&s[&key]));
            }
        }
    }
    // Per queue pair: `queues` of each side.
    for (name, key, help) in [
        (
            "sbnet_queue_packets_total",
            "packets",
            "Frames per queue pair: sent from its transmitq (dir=tx) or delivered on its receiveq (dir=rx).",
        ),
        (
            "sbnet_queue_bytes_total",
            "bytes",
            "Frame bytes per queue pair, as sbnet_queue_packets_total.",
        ),
    ] {
        header(&mut out, name, "counter", help);
        for (ll, l) in &named {
            for (sl, s) in sides(l) {
                for (q, c) in s["queues"].as_array().into_iter().flatten().enumerate() {
                    let ql = format!("queue=\"{q}\"");
                    for dir in ["tx", "rx"] {
                        let v = num(&c[format!("{dir}_{key}")]);
                        sample(&mut out, name, &[ll, &sl, &ql, &format!("dir=\"{dir}\"")], v);
                    }
                }
            }
        }
    }
    for (key, help) in LEDGER_SIDE {
        let name = format!("sbnet_ledger_{key}");
        header(&mut out, &name, "gauge", help);
        for (ll, l) in &named {
            if let Some(a) = l["ledger"]["sides"].as_array() {
                for (k, s) in a.iter().enumerate() {
                    sample(
                        &mut out,
                        &name,
                        &[ll, &format!("side=\"{k}\"")],
                        num(&s[*key]),
                    );
                }
            }
        }
    }
    for (key, kind, help) in [
        ("nobody", "gauge", "Slots owned by neither side."),
        ("slots", "gauge", "Slots in the link's region."),
        (
            "whole",
            "gauge",
            "1 when the ledger is whole: every slot owned exactly once.",
        ),
    ] {
        let name = format!("sbnet_ledger_{key}");
        header(&mut out, &name, kind, help);
        for (ll, l) in &named {
            sample(&mut out, &name, &[ll], num(&l["ledger"][key]));
        }
    }
    out
}

/// Writes `text` to `path` atomically (a temporary file, then a rename).
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labels_types_and_values() {
        let link = serde_json::json!({
            "name": "a\"b",
            "epoch": 7,
            "mode": "ZeroCopy",
            "sides": [
                {"tx_packets": 5, "rx_packets": 1, "tx_bytes": 300, "rx_bytes": 60, "tx_zero_copy": 5,
                 "tx_copied": 0, "dma_maps_peak": 2, "kicks": 9, "refusals": 0,
                 "queues": [{"tx_packets": 2, "rx_packets": 1}, {"tx_packets": 3, "rx_packets": 0}]},
                {"tx_packets": 1, "rx_packets": 5, "tx_bytes": 60, "rx_bytes": 300, "tx_zero_copy": 0,
                 "tx_copied": 1, "dma_maps_peak": 1, "kicks": 3, "refusals": 0}
            ],
            "ledger": {"sides": [{"owned": 4}, {"owned": 2}], "nobody": 2, "slots": 8, "whole": true}
        });
        let t = render(&[link]);
        assert!(t.contains("# TYPE sbnet_packets_total counter"), "{t}");
        assert!(
            t.contains("sbnet_packets_total{link=\"a\\\"b\",side=\"1\",dir=\"rx\"} 5"),
            "{t}"
        );
        assert!(
            t.contains("sbnet_tx_path_total{link=\"a\\\"b\",side=\"1\",path=\"copied\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("sbnet_kicks_total{link=\"a\\\"b\",side=\"0\"} 9"),
            "{t}"
        );
        assert!(t.contains("sbnet_ledger_whole{link=\"a\\\"b\"} 1"), "{t}");
        assert!(t.contains("sbnet_epoch{link=\"a\\\"b\"} 7"), "{t}");
        assert!(t.contains("sbnet_zero_copy{link=\"a\\\"b\"} 1"), "{t}");
        assert!(t.contains("# TYPE sbnet_dma_maps_peak gauge"), "{t}");
        assert!(!t.contains("dma_maps_peak_total"), "{t}");
        assert!(!t.contains("sbnet_queues_total"), "{t}");
        assert!(
            t.contains(
                "sbnet_queue_packets_total{link=\"a\\\"b\",side=\"0\",queue=\"1\",dir=\"tx\"} 3"
            ),
            "{t}"
        );
    }

    #[test]
    fn atomic_write_replaces() {
        let d = std::env::temp_dir().join(format!("sbnet-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("m.prom");
        write_atomic(&p, "a 1\n").unwrap();
        write_atomic(&p, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "no temporary left"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
