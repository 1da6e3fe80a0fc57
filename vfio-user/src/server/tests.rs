//! Unit tests of the server: bind rules, region-info replies, and a
//! [`Connection`] driven over a socketpair.

use super::connection::{region_info_reply, Connection, ConnectionEnd};
use super::*;
use crate::wire::{
    CapHeader, Command, Header, RegionAccess, RegionInfo, SparseArea, SparseMmap, Version,
    FLAG_ERROR, FLAG_NO_REPLY, FLAG_TYPE_REPLY, HEADER_LEN, MAX_FDS, MAX_MESSAGE,
    REGION_CAP_SPARSE_MMAP, REGION_INFO_LEN, VERSION_MINOR,
};
use bytemuck::{bytes_of, pod_read_unaligned};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::io::{IoSliceMut, Read, Write};
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sbnet-vfu-unit-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A config region of 256 bytes and one mmap-able region 2 (fd given).
struct Mock {
    config: [u8; 256],
    mmap_fd: Option<RawFd>,
    resets: usize,
    disconnects: usize,
}

impl Mock {
    fn new() -> Mock {
        Mock {
            config: [0; 256],
            mmap_fd: None,
            resets: 0,
            disconnects: 0,
        }
    }
}

impl Backend for Mock {
    fn regions(&self) -> Vec<RegionDesc> {
        vec![
            RegionDesc {
                index: 2,
                size: 0x1000,
                flags: RegionFlags::READ | RegionFlags::WRITE,
                mmap: self.mmap_fd.map(|fd| (fd, 0x2000)),
            },
            RegionDesc {
                index: 7,
                size: 256,
                flags: RegionFlags::READ | RegionFlags::WRITE,
                mmap: None,
            },
        ]
    }
    fn irqs(&self) -> Vec<IrqDesc> {
        vec![IrqDesc {
            index: 2,
            count: 3,
            flags: IrqInfoFlags::EVENTFD,
        }]
    }
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), Errno> {
        if region != 7 {
            return Err(Errno::EIO);
        }
        let at = offset as usize;
        data.copy_from_slice(&self.config[at..at + data.len()]);
        Ok(())
    }
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), Errno> {
        if region != 7 {
            return Err(Errno::EIO);
        }
        let at = offset as usize;
        self.config[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn dma_map(
        &mut self,
        _: u64,
        _: u64,
        _: u64,
        _: DmaMapFlags,
        fd: Option<OwnedFd>,
    ) -> Result<(), Errno> {
        fd.map(drop).ok_or(Errno::EINVAL)
    }
    fn dma_unmap(&mut self, _: u64, _: u64, _: DmaUnmapFlags) -> Result<(), Errno> {
        Ok(())
    }
    fn set_irqs(
        &mut self,
        _: u32,
        _: IrqSetFlags,
        _: u32,
        _: u32,
        _: Vec<OwnedFd>,
    ) -> Result<(), Errno> {
        Ok(())
    }
    fn max_dma_maps(&self) -> u32 {
        64
    }

    fn reset(&mut self) {
        self.resets += 1;
    }
    fn disconnected(&mut self) {
        self.disconnects += 1;
    }
}

fn message(id: u16, command: impl Into<u16>, flags: u32, body: &[u8]) -> Vec<u8> {
    let header = Header {
        message_id: id,
        command: command.into(),
        message_size: (HEADER_LEN + body.len()) as u32,
        flags,
        error: 0,
    };
    let mut out = bytes_of(&header).to_vec();
    out.extend_from_slice(body);
    out
}

/// Reads one reply; None at EOF.
fn read_reply(stream: &mut UnixStream) -> Option<(Header, Vec<u8>)> {
    let mut raw = [0u8; HEADER_LEN];
    stream.read_exact(&mut raw).ok()?;
    let header: Header = pod_read_unaligned(&raw);
    let mut body = vec![0u8; header.message_size as usize - HEADER_LEN];
    stream.read_exact(&mut body).ok()?;
    Some((header, body))
}

/// Negotiates VERSION 0.0 (no version data) and returns the reply's data.
fn negotiate(s: &mut UnixStream) -> Vec<u8> {
    let body = bytes_of(&Version { major: 0, minor: 0 }).to_vec();
    s.write_all(&message(0x7000, Command::Version, 0, &body))
        .expect("send");
    let (h, reply) = read_reply(s).expect("VERSION reply");
    assert_eq!(h.flags & FLAG_ERROR, 0, "VERSION refused");
    reply[size_of::<Version>()..].to_vec()
}

/// Runs a Connection on one end of a socketpair in a thread.
fn with_connection(mock: Mock, client: impl FnOnce(&mut UnixStream)) -> (Mock, ConnectionEnd) {
    let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
    ours.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let server = std::thread::spawn(move || {
        let mut mock = mock;
        let end = Connection::new(theirs, &mut mock).run(&stop2);
        (mock, end)
    });
    client(&mut ours);
    drop(ours);
    let result = server.join().expect("connection thread panicked");
    stop.store(true, Ordering::Relaxed);
    result
}

#[test]
fn bind_reports_missing_directory() {
    let dir = temp_dir("missing");
    let path = dir.join("no-such-dir").join("s.sock");
    match Server::bind(&path) {
        Err(ServerError::MissingParent { dir: d }) => assert_eq!(d, dir.join("no-such-dir")),
        other => panic!("expected MissingParent, got {other:?}"),
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bind_leaves_a_regular_file_alone() {
    let dir = temp_dir("file");
    let path = dir.join("s.sock");
    std::fs::write(&path, b"keep me").expect("write");
    assert!(matches!(
        Server::bind(&path),
        Err(ServerError::NotASocket { .. })
    ));
    assert_eq!(std::fs::read(&path).expect("read"), b"keep me");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bind_replaces_a_stale_socket_and_refuses_a_live_one() {
    let dir = temp_dir("stale");
    let path = dir.join("s.sock");
    drop(UnixListener::bind(&path).expect("bind")); // leaves the file
    assert!(path.exists());
    let server = Server::bind(&path).expect("stale socket replaced");
    match Server::bind(&path) {
        Err(e @ ServerError::InUse { .. }) => {
            assert!(e.to_string().contains("choose another --socket"))
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    drop(server);
    assert!(!path.exists(), "drop removes the socket file");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn region_info_sends_caps_only_when_they_fit() {
    let region = RegionDesc {
        index: 2,
        size: 0x1000,
        flags: RegionFlags::READ | RegionFlags::WRITE,
        mmap: Some((42, 0x2000)),
    };
    let small = region_info_reply(Some(&region), 2, REGION_INFO_LEN as u32);
    assert_eq!(small.body.len(), REGION_INFO_LEN);
    assert_eq!(small.fd, Some(42));
    let info: RegionInfo = pod_read_unaligned(&small.body);
    assert_eq!(info.argsz, 64);
    assert_eq!(info.flags & RegionFlags::CAPS.bits(), 0);
    assert_ne!(info.flags & RegionFlags::MMAP.bits(), 0);
    assert_eq!(info.offset, 0x2000);

    let full = region_info_reply(Some(&region), 2, 64);
    assert_eq!(full.body.len(), 64);
    let info: RegionInfo = pod_read_unaligned(&full.body[..REGION_INFO_LEN]);
    assert_eq!(
        info.flags & RegionFlags::CAPS.bits(),
        RegionFlags::CAPS.bits()
    );
    assert_eq!(info.cap_offset, 32);
    let cap: CapHeader = pod_read_unaligned(&full.body[32..40]);
    assert_eq!(
        (cap.id, cap.version, cap.next),
        (REGION_CAP_SPARSE_MMAP, 1, 0)
    );
    let sparse: SparseMmap = pod_read_unaligned(&full.body[40..48]);
    assert_eq!(sparse.nr_areas, 1);
    let area: SparseArea = pod_read_unaligned(&full.body[48..64]);
    assert_eq!((area.offset, area.size), (0, 0x1000));

    let absent = region_info_reply(None, 5, 64);
    let info: RegionInfo = pod_read_unaligned(&absent.body);
    assert_eq!((info.index, info.size, info.flags), (5, 0, 0));
    assert_eq!(absent.fd, None);
}

#[test]
fn version_reply_never_exceeds_the_proposed_minor() {
    let (_, end) = with_connection(Mock::new(), |s| {
        let mut body = bytes_of(&Version { major: 0, minor: 0 }).to_vec();
        body.extend_from_slice(b"{}\0");
        s.write_all(&message(7, Command::Version, 0, &body))
            .expect("send");
        let (h, reply) = read_reply(s).expect("reply");
        assert_eq!(
            (h.message_id, h.command, h.flags),
            (7, Command::Version as u16, FLAG_TYPE_REPLY)
        );
        let v: Version = pod_read_unaligned(&reply[..4]);
        assert_eq!((v.major, v.minor), (0, 0));
        assert_eq!(reply.last(), Some(&0));
        let json: serde_json::Value =
            serde_json::from_slice(&reply[4..reply.len() - 1]).expect("json");
        assert_eq!(json["capabilities"]["max_msg_fds"], MAX_FDS);

        let mut body = bytes_of(&Version { major: 0, minor: 9 }).to_vec();
        body.extend_from_slice(b"{}\0");
        s.write_all(&message(8, Command::Version, 0, &body))
            .expect("send");
        let (_, reply) = read_reply(s).expect("reply");
        let v: Version = pod_read_unaligned(&reply[..4]);
        assert_eq!(v.minor, VERSION_MINOR);

        let body = bytes_of(&Version { major: 1, minor: 0 }).to_vec();
        s.write_all(&message(9, Command::Version, 0, &body))
            .expect("send");
        let (h, _) = read_reply(s).expect("reply");
        assert_eq!(h.flags, FLAG_TYPE_REPLY | FLAG_ERROR);
        assert_eq!(h.error, Errno::ENOTSUP as u32);
    });
    assert!(matches!(end, ConnectionEnd::Eof));
}

#[test]
fn no_reply_is_honoured_and_queries_without_reply_are_not_run() {
    let (mock, end) = with_connection(Mock::new(), |s| {
        negotiate(s);
        let write = RegionAccess {
            offset: 0x10,
            region: 7,
            count: 4,
        };
        let mut body = bytes_of(&write).to_vec();
        body.extend_from_slice(&[1, 2, 3, 4]);
        s.write_all(&message(1, Command::RegionWrite, FLAG_NO_REPLY, &body))
            .expect("send");
        s.write_all(&message(2, Command::DeviceReset, FLAG_NO_REPLY, &[]))
            .expect("send");
        let read = RegionAccess {
            offset: 0x10,
            region: 7,
            count: 4,
        };
        s.write_all(&message(
            3,
            Command::RegionRead,
            FLAG_NO_REPLY,
            bytes_of(&read),
        ))
        .expect("send");
        s.write_all(&message(4, Command::RegionRead, 0, bytes_of(&read)))
            .expect("send");
        let (h, reply) = read_reply(s).expect("reply");
        assert_eq!(h.message_id, 4, "only the last message is answered");
        assert_eq!(&reply[16..], &[1, 2, 3, 4]);
    });
    assert!(matches!(end, ConnectionEnd::Eof));
    assert_eq!(mock.resets, 1);
}

#[test]
fn commands_before_version_are_refused_and_version_tells_the_truth() {
    let (mock, end) = with_connection(Mock::new(), |s| {
        let read = RegionAccess {
            offset: 0,
            region: 7,
            count: 4,
        };
        s.write_all(&message(1, Command::RegionRead, 0, bytes_of(&read)))
            .expect("send");
        s.write_all(&message(2, Command::DeviceReset, 0, &[]))
            .expect("send");
        for id in [1, 2] {
            let (h, body) = read_reply(s).expect("error reply, connection kept");
            assert_eq!(h.message_id, id);
            assert_ne!(
                h.flags & FLAG_ERROR,
                0,
                "message {id} served before VERSION"
            );
            assert_eq!(h.error, Errno::EINVAL as u32);
            assert!(body.is_empty());
        }
        let data = negotiate(s);
        let caps = crate::caps::VersionData::parse(&data)
            .expect("valid version data")
            .and_then(|v| v.capabilities)
            .expect("capabilities");
        assert_eq!(caps.max_dma_maps, Some(64), "the backend's own limit");
        assert_eq!(caps.migration, None, "migration is not supported");
        s.write_all(&message(3, Command::DeviceReset, 0, &[]))
            .expect("send");
        let (h, _) = read_reply(s).expect("reply");
        assert_eq!((h.message_id, h.flags & FLAG_ERROR), (3, 0));
    });
    assert!(matches!(end, ConnectionEnd::Eof));
    assert_eq!(mock.resets, 1, "only the reset after VERSION ran");
}

#[test]
fn untrusted_sizes_close_the_connection() {
    for size in [0u32, 15, MAX_MESSAGE + 1, u32::MAX] {
        let (_, end) = with_connection(Mock::new(), |s| {
            let header = Header {
                message_id: 1,
                command: Command::Version as u16,
                message_size: size,
                flags: 0,
                error: 0,
            };
            s.write_all(bytes_of(&header)).expect("send");
            assert!(read_reply(s).is_none(), "size {size}: expected EOF");
        });
        assert!(
            matches!(end, ConnectionEnd::Protocol(_)),
            "size {size}: {end:?}"
        );
    }
}

#[test]
fn region_info_over_the_socket_carries_the_fd() {
    let memfd =
        nix::sys::memfd::memfd_create(c"unit", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
            .expect("memfd");
    let mut mock = Mock::new();
    mock.mmap_fd = Some(memfd.as_raw_fd());
    let (_, end) = with_connection(mock, |s| {
        negotiate(s);
        let asked = RegionInfo {
            argsz: 64,
            index: 2,
            ..RegionInfo::default()
        };
        s.write_all(&message(
            1,
            Command::DeviceGetRegionInfo,
            0,
            bytes_of(&asked),
        ))
        .expect("send");
        let mut raw = [0u8; 80];
        let mut cmsg = nix::cmsg_space!([RawFd; 2]);
        let mut iov = [IoSliceMut::new(&mut raw)];
        let msg = recvmsg::<()>(
            s.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .expect("recvmsg");
        assert_eq!(msg.bytes, 80);
        let mut got = Vec::new();
        for c in msg.cmsgs().expect("cmsgs") {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for fd in fds {
                    // SAFETY: installed for us by this recvmsg; sole owner.
                    got.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        assert_eq!(got.len(), 1);
    });
    assert!(matches!(end, ConnectionEnd::Eof));
}

#[test]
fn stop_ends_an_idle_connection() {
    let (_ours, theirs) = UnixStream::pair().expect("socketpair");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let server = std::thread::spawn(move || {
        let mut mock = Mock::new();
        let end = Connection::new(theirs, &mut mock).run(&stop2);
        matches!(end, ConnectionEnd::Stopped)
    });
    std::thread::sleep(Duration::from_millis(50));
    let t = std::time::Instant::now();
    stop.store(true, Ordering::Relaxed);
    assert!(server.join().expect("no panic"));
    assert!(t.elapsed() < Duration::from_secs(1));
}
