//! [`Server`]: binds a UNIX socket, serves one client at a time (later
//! clients wait in the listen backlog) and stops when asked.

use super::connection::{Connection, ConnectionEnd};
use super::Backend;
use crate::wire::{wait_readable, POLL_INTERVAL};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use thiserror::Error;
use tracing::{info, warn};

/// How long one reply may wait for room in the socket before the client is
/// considered gone (a client that never reads must not stall `stop`).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of [`Server::bind`] and [`Server::serve`]. Each says what to do.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The socket's directory does not exist.
    #[error("directory {dir} does not exist; create it or choose another --socket")]
    MissingParent {
        /// The missing directory.
        dir: PathBuf,
    },
    /// A server already answers on the path.
    #[error("another server is listening on {path}; stop it or choose another --socket")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; it is left alone.
    #[error("{path} exists and is not a socket; remove it or choose another --socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Probing an existing socket failed for a reason other than "nobody listens".
    #[error("cannot tell whether a server listens on {path}: {source}; remove the file if it is stale or choose another --socket")]
    Probe {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A stale socket file could not be removed.
    #[error(
        "cannot remove stale socket {path}: {source}; remove it by hand or choose another --socket"
    )]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `bind` or `listen` failed.
    #[error("cannot listen on {path}: {source}; check permissions and that the path is shorter than 108 bytes")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for clients failed; the listening socket is unusable.
    #[error("waiting for clients on {path} failed: {source}; restart the server")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A bound vfio-user socket. [`Server::serve`] runs the accept loop; dropping
/// the server removes the socket file it created.
#[derive(Debug)]
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    /// `(st_dev, st_ino)` of the socket file this server created, so `Drop`
    /// removes only that file and not one a successor created since.
    ident: Option<(u64, u64)>,
}

impl Server {
    /// Binds `path`. A stale socket file (nobody answers on it) is replaced;
    /// a live server, a missing directory or a non-socket file is an error.
    pub fn bind(path: &Path) -> Result<Server, ServerError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.is_dir() {
                return Err(ServerError::MissingParent {
                    dir: dir.to_path_buf(),
                });
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ServerError::InUse {
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    warn!(path = %path.display(), "removing stale vfio-user socket (nobody listens on it)");
                    std::fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
                        path: path.to_path_buf(),
                        source,
                    })?;
                }
                Err(source) => {
                    return Err(ServerError::Probe {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            },
            Ok(_) => {
                return Err(ServerError::NotASocket {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ServerError::Probe {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let bind_err = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let ident = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        info!(path = %path.display(), "vfio-user server listening");
        Ok(Server {
            listener,
            path: path.to_path_buf(),
            ident,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients one at a time until `stop` is set (checked at least
    /// every [`POLL_INTERVAL`], while waiting for a client and while one is
    /// connected). Later clients wait in the listen backlog. The backend sees
    /// `connected()` after each accept and `disconnected()` when that client
    /// leaves for any reason. Errors only when the listening socket fails.
    pub fn serve(&self, backend: &mut dyn Backend, stop: &AtomicBool) -> Result<(), ServerError> {
        let listen_err = |source| ServerError::Listen {
            path: self.path.clone(),
            source,
        };
        loop {
            // Relaxed: `stop` is a lone flag; no data is published with it.
            if stop.load(Ordering::Relaxed) {
                info!(path = %self.path.display(), "vfio-user server stopping");
                return Ok(());
            }
            match wait_readable(self.listener.as_fd()) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => return Err(listen_err(e.into())),
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.serve_client(stream, backend, stop),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // ECONNABORTED, EMFILE...: the listener itself is fine;
                    // back off so a persistent error does not spin.
                    warn!(path = %self.path.display(), error = %e, "accept failed");
                    std::thread::sleep(POLL_INTERVAL);
                }
            }
        }
    }

    fn serve_client(&self, stream: UnixStream, backend: &mut dyn Backend, stop: &AtomicBool) {
        info!(path = %self.path.display(), "vfio-user client connected");
        serve_stream(stream, backend, stop);
    }
}

/// Serves one already-connected client on `stream` until it leaves, the
/// stream breaks or `stop` is set, exactly as [`Server::serve`] serves each
/// accepted client: the backend sees `connected()` first and
/// `disconnected()` last, whatever happened. Returns whether the client left
/// cleanly (EOF between messages, or `stop`); `false` means the connection
/// was closed for a protocol or I/O error. A seam for the fuzz crate, which
/// serves one `socketpair` per input without a listening socket.
#[doc(hidden)]
pub fn serve_stream(stream: UnixStream, backend: &mut dyn Backend, stop: &AtomicBool) -> bool {
    if let Err(e) = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_write_timeout(Some(SEND_TIMEOUT)))
    {
        warn!(error = %e, "cannot configure the client socket; dropping the client");
        return false;
    }
    backend.connected();
    let mut conn = Connection::new(stream, backend);
    let end = conn.run(stop);
    let failed = conn.failed_requests();
    let clean = match &end {
        ConnectionEnd::Eof => {
            info!(failed_requests = failed, "vfio-user client disconnected");
            true
        }
        ConnectionEnd::Stopped => {
            info!("server stopping: dropping the vfio-user client");
            true
        }
        ConnectionEnd::Protocol(why) => {
            warn!(reason = %why, "closing the vfio-user connection: protocol error");
            false
        }
        ConnectionEnd::Io(e) => {
            warn!(error = %e, "closing the vfio-user connection: I/O error");
            false
        }
    };
    drop(conn);
    backend.disconnected();
    clean
}

impl Drop for Server {
    fn drop(&mut self) {
        let current = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if current.is_some() && current == self.ident {
            if let Err(e) = std::fs::remove_file(&self.path) {
                warn!(path = %self.path.display(), error = %e, "cannot remove the socket file");
            }
        }
    }
}
