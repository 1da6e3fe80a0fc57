//! The vfio-user server's message handling against the real device backend
//! (side 0 of a `Pair`, through `SideHandle`, as host-pair serves it), over
//! one `socketpair` per input. The input is a sequence of records, each
//! `[fd spec: u8][length: u16 LE][bytes]`: the bytes go out in one
//! `sendmsg` (raw vfio-user wire bytes: headers with any command, size and
//! flags, any body) with the descriptors the spec names attached. The
//! server must not panic or hang, a broken stream may only close that
//! connection, and afterwards a well-formed client is served as before.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use sbnet_device::backend::SideHandle;
use sbnet_device::mem::sealed_memfd;
use sbnet_device::pair::Shared;
use sbnet_vfio_user::server::serve_stream;
use std::io::{IoSlice, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::sync::Once;

/// Most input bytes sent per run: well below a socket's buffer, so the
/// client thread never blocks writing while the server writes replies.
const MAX_INPUT: usize = 64 * 1024;

/// One descriptor to attach, by kind (2 bits each in the fd spec).
fn make_fd(kind: u8) -> OwnedFd {
    match kind & 3 {
        // Guest memory as a VMM sends it: a sealed memfd.
        0 => sealed_memfd(c"fuzz-mem", 0x10000).expect("memfd").into(),
        // An interrupt fd as a VMM sends it.
        1 => nix::sys::eventfd::EventFd::new().expect("eventfd").into(),
        // Not an eventfd: the write end of a pipe nobody reads.
        2 => nix::unistd::pipe().expect("pipe").1,
        // A memfd that can be sealed but is not, 4 KiB.
        _ => {
            let fd = nix::sys::memfd::memfd_create(
                c"fuzz-unsealed",
                nix::sys::memfd::MemFdCreateFlag::MFD_ALLOW_SEALING,
            )
            .expect("memfd");
            nix::unistd::ftruncate(&fd, 4096).expect("ftruncate");
            fd
        }
    }
}

/// Splits the input into (fd spec, bytes) records.
fn records(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let [spec, a, b, rest @ ..] = data {
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
        out.push((*spec, &rest[..len]));
        data = &rest[len..];
    }
    if !data.is_empty() {
        out.push((0, data));
    }
    out
}

/// Sends the records from the client end, then half-closes it and reads
/// every reply until the server closes its end. Returns the reply bytes.
fn client(stream: UnixStream, recs: Vec<(u8, Vec<u8>)>) -> Vec<u8> {
    for (spec, bytes) in &recs {
        let fds: Vec<OwnedFd> = (0..spec & 3)
            .map(|i| make_fd(spec >> (2 + 2 * i)))
            .collect();
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
        let iov = [IoSlice::new(bytes)];
        // MSG_NOSIGNAL: the server may have closed the connection already.
        if sendmsg::<()>(
            stream.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .is_err()
        {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    let mut replies = Vec::new();
    // A server that hangs shows up as libFuzzer's timeout, not here.
    let _ = (&stream).read_to_end(&mut replies);
    replies
}

/// Serves `recs` on a fresh socketpair; returns (clean end, reply bytes).
fn serve(handle: &mut SideHandle, recs: Vec<(u8, Vec<u8>)>) -> (bool, Vec<u8>) {
    let (server, client_end) = UnixStream::pair().expect("socketpair");
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let c = s.spawn(move || client(client_end, recs));
        let clean = serve_stream(server, handle, &stop);
        (clean, c.join().expect("client thread"))
    })
}

fn msg(id: u16, command: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + body.len());
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&command.to_le_bytes());
    m.extend_from_slice(&(16 + body.len() as u32).to_le_bytes());
    m.extend_from_slice(&[0; 8]);
    m.extend_from_slice(body);
    m
}

/// A well-formed client: VERSION, then a read of the PCI vendor and device
/// IDs. Both must be answered without error.
fn check_still_served(handle: &mut SideHandle) {
    let mut bytes = msg(1, 1, b"\0\0\0\0{}\0");
    let mut read = Vec::new();
    read.extend_from_slice(&0u64.to_le_bytes());
    read.extend_from_slice(&sbnet_abi::layout::CONFIG_REGION.to_le_bytes());
    read.extend_from_slice(&4u32.to_le_bytes());
    bytes.extend_from_slice(&msg(2, 9, &read));
    let (clean, replies) = serve(handle, vec![(0, bytes)]);
    assert!(clean, "a well-formed client was disconnected");
    let size = |at: usize| u32::from_le_bytes(replies[at + 4..at + 8].try_into().unwrap()) as usize;
    let flags = |at: usize| u32::from_le_bytes(replies[at + 8..at + 12].try_into().unwrap());
    assert!(replies.len() >= 16, "no VERSION reply");
    assert_eq!(flags(0) & (1 << 5), 0, "VERSION refused after fuzzing");
    let second = size(0);
    assert!(replies.len() >= second + 16 + 20, "no REGION_READ reply");
    assert_eq!(
        flags(second) & (1 << 5),
        0,
        "REGION_READ refused after fuzzing"
    );
    let data = &replies[second + 32..second + 36];
    assert_eq!(data, &0x1041_1af4u32.to_le_bytes(), "wrong PCI IDs");
}

fuzz_target!(|data: &[u8]| {
    static IGNORE_SIGPIPE: Once = Once::new();
    IGNORE_SIGPIPE.call_once(|| {
        // SAFETY: setting a signal to SIG_IGN installs no handler code.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    });
    let data = &data[..data.len().min(MAX_INPUT)];
    let shared = Shared::new(sbnet_fuzz::pair()).expect("shared");
    let mut handle = SideHandle::new(shared.clone(), 0);
    let recs = records(data)
        .into_iter()
        .map(|(spec, b)| (spec, b.to_vec()))
        .collect();
    let _ = serve(&mut handle, recs);
    // The connection is gone: the side was disconnected and reset.
    assert!(
        !shared.lock().fns[0].is_active(),
        "side 0 still active after its client left"
    );
    check_still_served(&mut handle);
});
