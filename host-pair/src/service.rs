//! The service: the links it serves and the switch threads that poll them.
//! A new link goes to the thread with the fewest links; removing a link
//! takes it off its thread, then stops its servers. Links share no state,
//! so adding or removing one leaves the others' traffic, counters and
//! epochs as they were.

use crate::config::{check_unique, LinkSpec};
use crate::link::Link;
use crate::stats;
use anyhow::{anyhow, bail, Context, Result};
use sbnet_device::pair::{run_links, LinkSet, PollMode};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

/// Links and switch threads.
#[derive(Debug)]
pub struct Service {
    /// The links; `None` once the service shut down (no more adds).
    links: Mutex<Option<Vec<Link>>>,
    /// The links as they were at shutdown, for the last report.
    stopped: OnceLock<Vec<Link>>,
    sets: Vec<Arc<LinkSet>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Service {
    /// Starts `threads` switch threads (at least one), with no link yet.
    pub fn new(threads: usize, mode: PollMode) -> Result<Self> {
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        let mut sets = Vec::new();
        let mut handles = Vec::new();
        for k in 0..threads {
            let set = LinkSet::new().context("cannot create a switch thread's eventfd")?;
            let s = set.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("switch-{k}"))
                    .spawn(move || run_links(&s, mode))
                    .context("cannot start a switch thread")?,
            );
            sets.push(set);
        }
        Ok(Self {
            links: Mutex::new(Some(Vec::new())),
            stopped: OnceLock::new(),
            sets,
            threads: Mutex::new(handles),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<Vec<Link>>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the links (after shutdown: as they were then).
    fn with_links<R>(&self, f: impl FnOnce(&[Link]) -> R) -> R {
        let guard = self.lock();
        let stopped = self.stopped.get().map(Vec::as_slice);
        f(guard.as_deref().or(stopped).unwrap_or_default())
    }

    /// Checks `spec` (its rules, and no name or socket shared with a
    /// served link), creates the pair, binds both sockets, then hands the
    /// link to the switch thread with the fewest links.
    pub fn add(&self, spec: LinkSpec) -> Result<()> {
        let refused = |e| anyhow!("link {:?}: {e}", spec.name);
        let cfg = spec.check().map_err(refused)?;
        self.with_links(|links| check_unique(&spec, links.iter().map(|l| &l.spec)))
            .map_err(refused)?;
        // Created and bound without the lock: a slow socket path must not
        // hold up the other links' reports and removals.
        let mut link = Link::start(spec, &cfg)?;
        let mut guard = self.lock();
        // Checked again: another add may have taken the name meanwhile.
        let free = match guard.as_mut() {
            None => Err(anyhow!("host-pair is shutting down")),
            Some(links) => check_unique(&link.spec, links.iter().map(|l| &l.spec))
                .map(|()| links)
                .map_err(|e| anyhow!("link {:?}: {e}", link.spec.name)),
        };
        let links = match free {
            Ok(links) => links,
            Err(e) => {
                drop(guard);
                link.stop();
                return Err(e);
            }
        };
        link.thread = (0..self.sets.len())
            .min_by_key(|&k| links.iter().filter(|l| l.thread == k).count())
            .unwrap_or(0);
        tracing::info!(link = %link.spec.name, thread = link.thread, "link live");
        self.sets[link.thread].add(link.shared.clone());
        links.push(link);
        Ok(())
    }

    /// Removes link `name` like an unplug: off its thread, then its
    /// servers stop (a connected client sees its socket close).
    pub fn remove(&self, name: &str) -> Result<()> {
        let mut link = {
            let mut guard = self.lock();
            let links = guard
                .as_mut()
                .ok_or_else(|| anyhow!("host-pair is shutting down"))?;
            let i = links
                .iter()
                .position(|l| l.spec.name == name)
                .ok_or_else(|| anyhow!("no link named {name:?}"))?;
            links.remove(i)
        };
        self.sets[link.thread].remove(&link.shared);
        tracing::info!(link = %name, "removing link");
        link.stop();
        Ok(())
    }

    /// Names of links whose server failed.
    pub fn failed(&self) -> Vec<String> {
        self.with_links(|links| {
            links
                .iter()
                .filter(|l| l.failed.load(Ordering::Relaxed))
                .map(|l| l.spec.name.clone())
                .collect()
        })
    }

    /// How many links are served.
    pub fn len(&self) -> usize {
        self.with_links(|l| l.len())
    }

    /// Each link's name, sockets, switch thread and parameters.
    pub fn list(&self) -> Vec<serde_json::Value> {
        self.with_links(|links| {
            links
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "name": l.spec.name,
                        "sockets": l.spec.sockets,
                        "thread": l.thread,
                        "params": l.spec.params,
                    })
                })
                .collect()
        })
    }

    /// Counter objects ([`stats::link_json`]) of every link, or of `name`
    /// only; `print` also prints their lines to stderr.
    pub fn stats(&self, name: Option<&str>, print: bool) -> Result<Vec<serde_json::Value>> {
        let out: Vec<serde_json::Value> = self.with_links(|links| {
            links
                .iter()
                .filter(|l| name.is_none_or(|n| n == l.spec.name))
                .map(|l| {
                    let p = l.shared.lock();
                    if print {
                        stats::print(&l.spec.name, &p);
                    }
                    stats::link_json(&l.spec.name, &p)
                })
                .collect()
        });
        if let (Some(n), true) = (name, out.is_empty()) {
            bail!("no link named {n:?}");
        }
        Ok(out)
    }

    /// Stops every link's servers, then the switch threads. The links'
    /// counters stay readable ([`Self::stats`]).
    pub fn shutdown(&self) {
        let Some(mut links) = self.lock().take() else {
            return;
        };
        // Every server is told first, so they wind down together.
        for l in links.iter() {
            l.shared.stop.store(true, Ordering::Relaxed);
        }
        for l in links.iter_mut() {
            self.sets[l.thread].remove(&l.shared);
            l.stop();
        }
        // Kept for the last report.
        let _ = self.stopped.set(links);
        for s in &self.sets {
            s.stop();
        }
        let threads: Vec<JoinHandle<()>> = self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }
}
