//! One running link: its pair (region, functions, switch, ledger) behind
//! [`Shared`], and the two vfio-user servers, one thread each. Stopping a
//! link stops its servers (a connected client sees its socket close) and
//! removes its socket files; no other link is touched.

use crate::config::LinkSpec;
use anyhow::{Context, Result};
use sbnet_device::pair::{Pair, PairConfig, Shared, SideHandle};
use sbnet_vfio_user::server::Server;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A link being served.
#[derive(Debug)]
pub struct Link {
    /// What it was made from.
    pub spec: LinkSpec,
    /// The pair and what its threads share.
    pub shared: Arc<Shared>,
    /// The switch thread that polls it (index into the service's threads;
    /// set when the service hands it over).
    pub thread: usize,
    /// Set when a server failed (its listening socket broke): the link no
    /// longer serves that side.
    pub failed: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
}

impl Link {
    /// Creates the pair, binds both sockets (so a bad path fails before
    /// anything is served), then starts a server thread per side. `cfg` is
    /// `spec.check()`'s answer.
    pub fn start(spec: LinkSpec, cfg: &PairConfig) -> Result<Self> {
        let pair = Pair::new(cfg).with_context(|| {
            let bytes = cfg.geometry.region_size();
            if cfg.huge_pages {
                format!(
                    "link {:?}: cannot create a {bytes} byte hugetlb region (a multiple of the huge page size? \
                     enough free huge pages? see vm.nr_hugepages in /proc/meminfo)",
                    spec.name
                )
            } else {
                format!(
                    "link {:?}: cannot create a {bytes} byte memfd region",
                    spec.name
                )
            }
        })?;
        let shared = Shared::new(pair).context("cannot create the switch's wake-up eventfd")?;
        let servers = spec
            .sockets
            .iter()
            .map(|p| Server::bind(p).with_context(|| format!("cannot serve on {}", p.display())))
            .collect::<Result<Vec<_>>>()?;
        tracing::info!(
            link = %spec.name,
            slots = spec.params.slots,
            slot_size = spec.params.slot_size,
            region_bytes = cfg.geometry.region_size(),
            queue_size = spec.params.queue_size,
            "serving side 0 on {} and side 1 on {}",
            spec.sockets[0].display(),
            spec.sockets[1].display()
        );
        let failed = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (side, server) in servers.into_iter().enumerate() {
            let (sh, fail) = (shared.clone(), failed.clone());
            let name = spec.name.clone();
            let t = std::thread::Builder::new()
                .name(format!("vfio-user-{side}"))
                .spawn(move || {
                    // Every log line of this side names its link.
                    let _span = tracing::info_span!("link", name = %name).entered();
                    let mut handle = SideHandle::new(sh.clone(), side);
                    if let Err(e) = server.serve(&mut handle, &sh.stop) {
                        tracing::error!(side, "vfio-user server stopped: {e}");
                        fail.store(true, Ordering::Relaxed);
                    }
                });
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let mut link = Self {
                        spec,
                        shared,
                        thread: 0,
                        failed,
                        servers: threads,
                    };
                    link.stop();
                    return Err(e).context("cannot start a server thread");
                }
            }
        }
        Ok(Self {
            spec,
            shared,
            thread: 0,
            failed,
            servers: threads,
        })
    }

    /// Stops both servers and waits for them: clients are dropped and the
    /// socket files removed. The caller has taken the link off its switch
    /// thread first. The pair (and its counters) stays readable.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake();
        for t in std::mem::take(&mut self.servers) {
            let _ = t.join();
        }
    }
}
