//! The control socket (`serve --control PATH`) and its client (`ctl`).
//!
//! Protocol (docs/many-links.md): a unix stream socket, mode 0600. The
//! client sends one JSON object on one line, the service answers with one
//! JSON object on one line, and so on until the client closes:
//!
//! - `{"cmd":"list"}` → `{"ok":true,"links":[{"name","sockets","thread","params"}]}`
//! - `{"cmd":"stats","link":NAME?}` → `{"ok":true,"links":[per-link counters]}`
//! - `{"cmd":"add","link":NAME,"sockets":[A,B],"params":{...}}` → `{"ok":true}`
//! - `{"cmd":"remove","link":NAME}` → `{"ok":true}`
//! - any failure → `{"ok":false,"error":"..."}`
//!
//! A client is hostile until proven otherwise: a request line is at most
//! [`MAX_LINE`] bytes and must arrive within [`READ_TIMEOUT`]; at most
//! [`MAX_CLIENTS`] are served at once, each on its own thread; garbage
//! gets a JSON error. None of it can stall the links or another client.

use crate::config::{CtlParams, LinkSpec, Params};
use crate::service::Service;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest request line accepted, in bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// How long a client may take to send a request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; more are answered with an error and closed.
pub const MAX_CLIENTS: usize = 16;

/// A request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// The links.
    List,
    /// Counters of every link, or of one.
    Stats {
        /// Only this link.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<String>,
    },
    /// Serve a new link.
    Add {
        /// Its name.
        link: String,
        /// Side 0's socket, then side 1's.
        sockets: Vec<PathBuf>,
        /// Parameters; those left out take the service's defaults.
        #[serde(default)]
        params: CtlParams,
    },
    /// Unplug a link.
    Remove {
        /// Its name.
        link: String,
    },
}

/// The listening control socket; dropping it removes the socket file.
#[derive(Debug)]
pub struct Control {
    path: PathBuf,
    ident: (u64, u64),
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Control {
    /// Binds `path` (mode 0600; a stale socket file is replaced, a live one
    /// refused) and serves requests on a thread. `defaults` fill what an
    /// `add` leaves out.
    pub fn start(path: &Path, service: Arc<Service>, defaults: Params) -> Result<Self> {
        if let Ok(m) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !m.file_type().is_socket() {
                bail!("{} exists and is not a socket", path.display());
            }
            if UnixStream::connect(path).is_ok() {
                bail!("{}: another server is listening on it", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod {}", path.display()))?;
        listener.set_nonblocking(true)?;
        let m = std::fs::symlink_metadata(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(&listener, &service, defaults, &s))
            .context("cannot start the control thread")?;
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(Self {
            path: path.to_path_buf(),
            ident: (m.dev(), m.ino()),
            thread: Some(thread),
            stop,
        })
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let same = std::fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.ident)
            .unwrap_or(false);
        if same {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One of the [`MAX_CLIENTS`] client places, given back when dropped
/// (whatever ends the client's thread).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::Relaxed);
        Self(busy.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn accept_loop(
    listener: &UnixListener,
    service: &Arc<Service>,
    defaults: Params,
    stop: &AtomicBool,
) {
    let busy = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(listener),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)).unwrap_or(0) <= 0 {
            continue;
        }
        let mut stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // EMFILE and the like: back off rather than spin.
                tracing::warn!("control socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if busy.load(Ordering::Relaxed) >= MAX_CLIENTS {
            let _ = stream.set_nonblocking(true);
            let _ = reply(
                &mut stream,
                &error(&format!("too many control clients (at most {MAX_CLIENTS})")),
            );
            continue;
        }
        let slot = Slot::take(&busy);
        let service = service.clone();
        // A failed spawn drops the closure, and the slot with it.
        let _ = std::thread::Builder::new()
            .name("control-client".into())
            .spawn(move || {
                let _slot = slot;
                serve_client(stream, &service, defaults);
            });
    }
}

fn error(msg: &str) -> Value {
    json!({"ok": false, "error": msg})
}

fn reply(stream: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())
}

/// Why no request line could be read.
enum LineError {
    /// The client closed between requests.
    Eof,
    /// Something to tell the client before closing.
    Tell(String),
}

/// Reads one request line (without its newline) into `line`, taking bytes
/// after it into `rest`: at most [`MAX_LINE`] bytes, all within
/// [`READ_TIMEOUT`] of the first call, however slowly they trickle in.
fn read_line(
    stream: &mut UnixStream,
    rest: &mut Vec<u8>,
    line: &mut Vec<u8>,
) -> Result<(), LineError> {
    let deadline = std::time::Instant::now() + READ_TIMEOUT;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = rest.iter().position(|&b| b == b'\n') {
            line.clear();
            line.extend_from_slice(&rest[..i]);
            rest.drain(..=i);
            return Ok(());
        }
        if rest.len() > MAX_LINE {
            return Err(LineError::Tell(format!(
                "request longer than {MAX_LINE} bytes"
            )));
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout = || {
            LineError::Tell(format!(
                "no complete request line within {} s",
                READ_TIMEOUT.as_secs()
            ))
        };
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(timeout());
        }
        match stream.read(&mut chunk) {
            Ok(0) if rest.is_empty() => return Err(LineError::Eof),
            Ok(0) => return Err(LineError::Tell("request not ended by a newline".into())),
            Ok(n) => rest.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(timeout()),
        }
    }
}

/// Serves one client: request lines until EOF, a timeout or a line too long.
fn serve_client(mut stream: UnixStream, service: &Service, defaults: Params) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_write_timeout(Some(READ_TIMEOUT)).is_err()
    {
        return;
    }
    let (mut rest, mut line) = (Vec::new(), Vec::new());
    loop {
        match read_line(&mut stream, &mut rest, &mut line) {
            Ok(()) => {
                let answer = handle(&line, service, defaults);
                if reply(&mut stream, &answer).is_err() {
                    return;
                }
            }
            Err(LineError::Eof) => return,
            Err(LineError::Tell(why)) => {
                let _ = reply(&mut stream, &error(&why));
                return;
            }
        }
    }
}

/// The answer to one request line.
fn handle(line: &[u8], service: &Service, defaults: Params) -> Value {
    let req: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return error(&format!("bad request: {e}")),
    };
    let res: Result<Value> = match req {
        Request::List => Ok(json!({"ok": true, "links": service.list()})),
        Request::Stats { link } => service
            .stats(link.as_deref(), false)
            .map(|l| json!({"ok": true, "links": l})),
        Request::Add {
            link,
            sockets,
            params,
        } => LinkSpec::new(&link, &sockets, params.apply(defaults))
            .map_err(|e| anyhow::anyhow!("link {link:?}: {e}"))
            .and_then(|spec| service.add(spec))
            .map(|()| json!({"ok": true})),
        Request::Remove { link } => service.remove(&link).map(|()| json!({"ok": true})),
    };
    res.unwrap_or_else(|e| error(&format!("{e:#}")))
}

/// Sends one request to the control socket at `path` and returns the
/// reply (waits up to `timeout`).
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Value> {
    let mut s = UnixStream::connect(path)
        .with_context(|| format!("cannot connect to the control socket {}", path.display()))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s)
        .take(64 << 20)
        .read_line(&mut answer)
        .context("no reply from host-pair")?;
    serde_json::from_str(&answer).with_context(|| format!("bad reply from host-pair: {answer:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let r: Request = serde_json::from_str(
            r#"{"cmd":"add","link":"x","sockets":["a","b"],"params":{"slots":64}}"#,
        )
        .unwrap();
        match &r {
            Request::Add { params, .. } => assert_eq!(params.slots, Some(64)),
            other => panic!("{other:?}"),
        }
        let back = serde_json::to_string(&r).unwrap();
        assert!(back.contains(r#""cmd":"add""#), "{back}");
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"list"}"#).is_ok());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"stats","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }
}
