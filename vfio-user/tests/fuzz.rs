//! Random vfio-user messages against the real device backend (sbnet-device's
//! pair and switch, served in-process as host-pair serves them). Whatever arrives, the server answers,
//! closes the connection or waits for more bytes; it never panics, and a
//! well-formed client can always connect afterwards and drive the device.

mod common;

use common::temp_dir;
use proptest::prelude::*;
use sbnet_abi::layout as l;
use sbnet_abi::shm::SlotGeometry;
use sbnet_device::pair::{run_switch, Pair, PairConfig, PollMode, Shared, SideHandle};
use sbnet_device::switch::SwitchConfig;
use sbnet_pmd::bus::vfio_user::VfioUserBus;
use sbnet_pmd::bus::Bus;
use sbnet_vfio_user::server::Server;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Side 0 of a real pair served on a socket, and the switch thread; stopped
/// and joined on drop.
struct Served {
    shared: Arc<Shared>,
    socket: PathBuf,
    threads: Vec<JoinHandle<()>>,
}

impl Served {
    fn start(dir: &Path, cfg: &PairConfig, poll: PollMode) -> Served {
        let shared = Shared::new(Pair::new(cfg).expect("pair")).expect("shared");
        let socket = dir.join("side0.sock");
        let server = Server::bind(&socket).expect("bind");
        let s = shared.clone();
        let serve = std::thread::spawn(move || {
            let mut h = SideHandle::new(s.clone(), 0);
            server.serve(&mut h, &s.stop).expect("serve");
        });
        let s = shared.clone();
        let switch = std::thread::spawn(move || run_switch(&s, poll));
        Served {
            shared,
            socket,
            threads: vec![serve, switch],
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Clone)]
struct Msg {
    command: u16,
    flags: u32,
    declared: u32,
    body: Vec<u8>,
    /// Bytes of the body actually sent (may be fewer than declared).
    send: usize,
}

fn msg() -> impl Strategy<Value = Msg> {
    (
        prop_oneof![0..16u16, any::<u16>()],
        prop_oneof![Just(0u32), Just(1 << 4), any::<u32>()],
        proptest::collection::vec(any::<u8>(), 0..96),
        prop_oneof![8 => Just(None), 1 => any::<u32>().prop_map(Some)],
        any::<bool>(),
    )
        .prop_map(|(command, flags, body, size, short)| {
            let declared = size.unwrap_or(16 + body.len() as u32);
            let send = if short { body.len() / 2 } else { body.len() };
            Msg {
                command,
                flags,
                declared,
                body,
                send,
            }
        })
}

fn encode(m: &Msg, id: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + m.body.len());
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&m.command.to_le_bytes());
    b.extend_from_slice(&m.declared.to_le_bytes());
    b.extend_from_slice(&m.flags.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&m.body[..m.send]);
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn random_messages_never_break_the_server(msgs in proptest::collection::vec(msg(), 1..12)) {
        let dir = temp_dir("fuzz");
        let cfg = PairConfig {
            geometry: SlotGeometry::new(2048, 16).unwrap(),
            max_queue_size: 256,
            switch: SwitchConfig::default(),
            huge_pages: false,
            queue_pairs: 1,
        };
        let p = Served::start(&dir, &cfg, PollMode::Adaptive { spin: 100 });
        let mut stream: Option<UnixStream> = None;
        for (i, m) in msgs.iter().enumerate() {
            let s = match stream.as_mut() {
                Some(s) => s,
                None => {
                    let s = UnixStream::connect(&p.socket).expect("connect");
                    s.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
                    s.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
                    let mut s = s;
                    // VERSION first (the server refuses everything else before it),
                    // so the random messages reach every command.
                    let version = [0u8; 4]; // 0.0, no version data
                    let command = sbnet_vfio_user::wire::Command::Version;
                    s.write_all(&common::message(0x7000, command, 0, &version)).unwrap();
                    let mut reply = [0u8; 4096];
                    let _ = s.read(&mut reply);
                    stream.insert(s)
                }
            };
            let ok = s.write_all(&encode(m, i as u16)).is_ok();
            let mut buf = [0u8; 4096];
            let alive = ok && match s.read(&mut buf) {
                Ok(0) => false,          // the server closed the connection
                Ok(_) => true,           // a reply (or an error reply)
                Err(_) => m.send == m.body.len() && m.declared as usize == 16 + m.body.len(),
            };
            if !alive {
                // Short or untrusted message: start over on a new connection.
                stream = None;
            }
        }
        drop(stream);
        // A well-formed client still connects and drives the device.
        let mut bus = VfioUserBus::connect_with_timeout(&p.socket, Duration::from_secs(5)).expect("reconnect after fuzzing");
        let mut id = [0u8; 4];
        bus.config_read(0, &mut id).unwrap();
        prop_assert_eq!(u32::from_le_bytes(id), 0x1041_1af4);
        let shm = bus.map_bar(l::SHM_BAR).unwrap();
        prop_assert_eq!(shm.len as u64, cfg.geometry.region_size());
        drop(bus);
        drop(p);
        std::fs::remove_dir_all(&dir).ok();
    }
}
