//! vfio-user protocol under attack: malformed, truncated and no-reply
//! messages from raw sockets against sbnet's `Server`, and a lying server
//! against the client. The server answers or closes, never panics, and
//! serves the next client.

mod common;

use common::wire::{self, Encode};
use common::*;
use nix::errno::Errno;
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use sbnet_abi::layout::CONFIG_REGION;
use sbnet_pmd::bus::vfio_user::VfioUserBus;
use sbnet_pmd::bus::BusError;
use sbnet_vfio_user::wire::{
    Command, DeviceInfo, DmaMap, DmaMapFlags, DmaUnmap, Header, RegionAccess, RegionInfo, Version,
    FLAG_ERROR, FLAG_NO_REPLY, FLAG_TYPE_REPLY, HEADER_LEN, MAX_MESSAGE,
};
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// How the server must answer a malformed message.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// An error reply with this errno, and the connection keeps working.
    Error(Errno),
    /// The connection is closed.
    Closed,
}

fn header_only(command: Command, message_size: u32) -> Vec<u8> {
    Header {
        message_id: 1,
        command: command.into(),
        message_size,
        flags: 0,
        error: 0,
    }
    .encode()
}

fn version_with(data: &[u8]) -> Vec<u8> {
    let mut body = Version { major: 0, minor: 1 }.encode();
    body.extend_from_slice(data);
    message(1, Command::Version, 0, &body)
}

fn access(region: u32, offset: u64, count: u32) -> Vec<u8> {
    RegionAccess {
        offset,
        region,
        count,
    }
    .encode()
}

#[test]
fn malformed_messages_are_refused_and_the_server_survives() {
    let mut h = Harness::start("malformed");
    let memfd = |name| memfd_create(name, MemFdCreateFlag::MFD_CLOEXEC).expect("memfd");
    let dma = DmaMap {
        argsz: 32,
        flags: DmaMapFlags::READ.bits(),
        offset: 0,
        address: 0x3_0000_0000,
        size: 4096,
    }
    .encode();
    let mut short_write = access(CONFIG_REGION, 0, 8);
    short_write.extend_from_slice(&[1, 2, 3, 4]);
    let mut long_write = access(CONFIG_REGION, 0, 2);
    long_write.extend_from_slice(&[1, 2, 3, 4]);
    let cases: Vec<(&str, Vec<u8>, usize, Expect)> = vec![
        (
            "message_size 0",
            header_only(Command::Version, 0),
            0,
            Expect::Closed,
        ),
        (
            "message_size 8",
            header_only(Command::DeviceGetInfo, 8),
            0,
            Expect::Closed,
        ),
        (
            "message_size 2 MiB",
            header_only(Command::Version, 2 << 20),
            0,
            Expect::Closed,
        ),
        (
            "message_size MAX+1",
            header_only(Command::RegionWrite, MAX_MESSAGE + 1),
            0,
            Expect::Closed,
        ),
        (
            "DMA_MAP body shorter than DmaMap",
            message(1, Command::DmaMap, 0, &dma[..8]),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "GET_REGION_INFO with no body",
            message(1, Command::DeviceGetRegionInfo, 0, &[]),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "REGION_READ count 0xFFFFFFFF",
            message(
                1,
                Command::RegionRead,
                0,
                &access(CONFIG_REGION, 0, u32::MAX),
            ),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "REGION_READ offset overflows",
            message(
                1,
                Command::RegionRead,
                0,
                &access(CONFIG_REGION, u64::MAX, 4),
            ),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "REGION_WRITE count > data",
            message(1, Command::RegionWrite, 0, &short_write),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "REGION_WRITE count < data",
            message(1, Command::RegionWrite, 0, &long_write),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "unknown command 999",
            message(1, 999u16, 0, &[0u8; 64]),
            0,
            Expect::Error(Errno::ENOTSUP),
        ),
        (
            "GET_REGION_IO_FDS",
            message(1, 6u16, 0, &[0u8; 16]),
            0,
            Expect::Error(Errno::ENOTSUP),
        ),
        (
            "VERSION JSON not NUL-terminated",
            version_with(b"{\"capabilities\":{}}"),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "VERSION invalid JSON",
            version_with(b"{capabilities\0"),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "VERSION invalid UTF-8",
            version_with(b"\xff\xff\0"),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "VERSION major 1",
            {
                let mut m = version_with(b"{}\0");
                m[HEADER_LEN] = 1;
                m
            },
            0,
            Expect::Error(Errno::ENOTSUP),
        ),
        (
            "DMA_MAP with 3 fds",
            message(1, Command::DmaMap, 0, &dma),
            3,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "REGION_READ with an fd",
            message(1, Command::RegionRead, 0, &access(CONFIG_REGION, 0, 4)),
            1,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "REGION_READ region 99",
            message(1, Command::RegionRead, 0, &access(99, 0, 4)),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "GET_REGION_INFO index 99",
            message(
                1,
                Command::DeviceGetRegionInfo,
                0,
                &RegionInfo {
                    argsz: 32,
                    index: 99,
                    ..RegionInfo::default()
                }
                .encode(),
            ),
            0,
            Expect::Error(Errno::EINVAL),
        ),
        (
            "DMA_UNMAP unknown flag",
            message(
                1,
                Command::DmaUnmap,
                0,
                &DmaUnmap {
                    argsz: 24,
                    flags: 1 << 7,
                    address: 0,
                    size: 0,
                }
                .encode(),
            ),
            0,
            Expect::Error(Errno::EINVAL),
        ),
    ];
    let mut disconnects = 0;
    for (case, bytes, nfds, expect) in cases {
        // Every case but VERSION's own comes after a VERSION exchange.
        let is_version = bytes.get(2..4) == Some(&u16::from(Command::Version).to_le_bytes()[..]);
        let mut s = if is_version {
            h.raw()
        } else {
            h.raw_versioned()
        };
        let fds: Vec<OwnedFd> = (0..nfds).map(|_| memfd(c"case")).collect();
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        let sent = sendmsg::<()>(
            s.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .expect("send");
        assert_eq!(sent, bytes.len(), "{case}");
        drop(fds);
        match expect {
            Expect::Closed => assert_closed(&mut s, case),
            Expect::Error(errno) => {
                let (header, body) =
                    read_reply(&mut s).unwrap_or_else(|| panic!("{case}: no reply"));
                assert_eq!(header.flags, FLAG_TYPE_REPLY | FLAG_ERROR, "{case}");
                assert_eq!(header.error, errno as u32, "{case}");
                assert!(body.is_empty(), "{case}: an error reply is only a header");
                // The stream is still in step.
                let info = DeviceInfo {
                    argsz: 16,
                    ..DeviceInfo::default()
                };
                // After a refused VERSION, only VERSION is served.
                let follow_up = if is_version {
                    message(
                        2,
                        Command::Version,
                        0,
                        &Version { major: 0, minor: 0 }.encode(),
                    )
                } else {
                    message(2, Command::DeviceGetInfo, 0, &info.encode())
                };
                s.write_all(&follow_up).expect("send");
                let (header, _) =
                    read_reply(&mut s).unwrap_or_else(|| panic!("{case}: no follow-up"));
                assert_eq!(
                    (header.message_id, header.flags),
                    (2, FLAG_TYPE_REPLY),
                    "{case}"
                );
            }
        }
        drop(s);
        disconnects += 1;
        h.wait_disconnects(disconnects);
        // A new, well-formed client is served.
        let mut bus = h.connect();
        assert_eq!(
            vendor_id(&mut bus),
            0x1af4,
            "{case}: server unusable afterwards"
        );
        drop(bus);
        disconnects += 1;
        h.wait_disconnects(disconnects);
    }
    assert!(h.stop() < Duration::from_secs(1));
}

#[test]
fn truncated_message_then_eof_is_dropped() {
    let h = Harness::start("truncated");
    let mut s = h.raw();
    let full = message(1, Command::DmaMap, 0, &[0u8; 32]);
    s.write_all(&full[..20]).expect("send");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert_closed(&mut s, "truncated");
    h.wait_disconnects(1);
    let mut bus = h.connect();
    assert_eq!(vendor_id(&mut bus), 0x1af4);
}

#[test]
fn no_reply_suppresses_replies() {
    let h = Harness::start("noreply");
    let mut s = h.raw_versioned();
    let mut body = access(0, 0x10, 4);
    body.extend_from_slice(&7u32.to_le_bytes());
    s.write_all(&message(1, Command::RegionWrite, FLAG_NO_REPLY, &body))
        .expect("send");
    // A refused command with NO_REPLY gets no reply either.
    s.write_all(&message(2, 999u16, FLAG_NO_REPLY, &[]))
        .expect("send");
    s.write_all(&message(3, Command::RegionRead, 0, &access(0, 0x10, 4)))
        .expect("send");
    let (header, body) = read_reply(&mut s).expect("reply");
    assert_eq!(header.message_id, 3);
    assert_eq!(&body[16..], &7u32.to_le_bytes());
}

#[test]
fn client_refuses_a_lying_server() {
    // A fake server that answers VERSION with a mismatched id, then one
    // whose reply claims 4 GiB: the client errors, never panics or allocates.
    for reply in [
        message(77, Command::Version, FLAG_TYPE_REPLY, &[0, 0, 0, 0]),
        Header {
            message_id: 0,
            command: Command::Version.into(),
            message_size: u32::MAX,
            flags: FLAG_TYPE_REPLY,
            error: 0,
        }
        .encode(),
        message(
            0,
            Command::Version,
            FLAG_TYPE_REPLY,
            &[0, 0, 9, 0, b'{', b'}', 0],
        ),
    ] {
        let dir = std::env::temp_dir().join(format!("sbnet-vfu-liar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("liar.sock");
        std::fs::remove_file(&path).ok();
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let fake = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut header = [0u8; HEADER_LEN];
            s.read_exact(&mut header).expect("request");
            let h = wire::header(&header);
            let mut rest = vec![0u8; h.message_size as usize - HEADER_LEN];
            s.read_exact(&mut rest).expect("body");
            s.write_all(&reply).ok();
            std::thread::sleep(Duration::from_millis(100));
        });
        let err = VfioUserBus::connect_with_timeout(&path, TIMEOUT).expect_err("lying server");
        assert!(
            matches!(err, BusError::Transport(_) | BusError::Unexpected(_)),
            "{err:?}"
        );
        fake.join().expect("fake server");
        std::fs::remove_dir_all(&dir).ok();
    }
}
