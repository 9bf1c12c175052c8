//! Datagrams in batches: one `recvmmsg` takes up to [`BATCH`] datagrams off the socket, one
//! `sendmmsg` sends up to [`BATCH`] to any mix of destinations. GSO only batches datagrams to
//! one destination, so it cannot help a fan-out to many listeners; `sendmmsg` can. A forwarded
//! packet then costs a share of a system call instead of one of its own.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};

/// Datagrams per system call, each way.
pub const BATCH: usize = 64;

/// Datagrams an [`Outbox`] holds at most while the socket's send buffer is full; past it new
/// ones are dropped (late audio is useless).
pub const MAX_QUEUED: usize = 16 * BATCH;

/// Room for any datagram WebRTC sends over a 1500-byte MTU path; a longer one is cut and
/// dropped (it cannot be ours: DTLS and RTP stay under the MTU).
pub const MAX_DATAGRAM: usize = 2048;

fn to_socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    address.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

fn io_error(errno: Errno) -> io::Error {
    io::Error::from_raw_os_error(errno as i32)
}

/// What one `recvmmsg` brought: the buffers and headers are made once and reused from call to
/// call; a call allocates only its list of slices over them (the borrow cannot outlive it).
pub struct Inbox {
    buffers: Box<[u8]>,
    headers: MultiHeaders<SockaddrStorage>,
    received: Vec<(SocketAddr, usize)>,
}

impl Default for Inbox {
    fn default() -> Self {
        Self {
            buffers: vec![0; BATCH * MAX_DATAGRAM].into_boxed_slice(),
            headers: MultiHeaders::preallocate(BATCH, None),
            received: Vec::with_capacity(BATCH),
        }
    }
}

impl Inbox {
    /// Takes what `socket` holds, up to [`BATCH`] datagrams, without waiting: 0 when there
    /// is nothing. Truncated datagrams and ones from a non-IP address are left out.
    pub fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.received.clear();
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .buffers
            .chunks_exact_mut(MAX_DATAGRAM)
            .map(|buffer| [IoSliceMut::new(buffer)])
            .collect();
        let results = match recvmmsg(
            socket.as_raw_fd(),
            &mut self.headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(results) => results,
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(0),
            Err(errno) => return Err(io_error(errno)),
        };
        for message in results {
            let whole = !message.flags.contains(MsgFlags::MSG_TRUNC);
            if let (true, Some(peer)) = (whole, message.address.as_ref().and_then(to_socket_addr)) {
                self.received.push((peer, message.bytes));
            } else {
                // Keeps the positions of the others: a skipped one still holds its buffer.
                self.received
                    .push((SocketAddr::from(([0, 0, 0, 0], 0)), usize::MAX));
            }
        }
        Ok(self.received.len())
    }

    /// How many datagrams the last [`Self::receive`] took, skipped ones included.
    pub fn len(&self) -> usize {
        self.received.len()
    }

    pub fn is_empty(&self) -> bool {
        self.received.is_empty()
    }

    /// Datagram `index` of the last [`Self::receive`] and where it came from; `None` for one
    /// that was skipped (truncated, or not from an IP address).
    pub fn datagram(&self, index: usize) -> Option<(SocketAddr, &[u8])> {
        let (peer, len) = *self.received.get(index)?;
        if len == usize::MAX {
            return None;
        }
        let start = index * MAX_DATAGRAM;
        Some((peer, self.buffers.get(start..start + len)?))
    }

    /// The datagrams of the last [`Self::receive`], with the address each came from (the
    /// thread takes them by index, driving connections in between).
    #[cfg(test)]
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        (0..self.len()).filter_map(|index| self.datagram(index))
    }
}

/// Datagrams waiting for one `sendmmsg`, to any mix of destinations. Sent through rustix,
/// whose `sendmmsg` returns the count sent (nix's result iterator reads address slots that
/// only its receive side fills).
pub struct Outbox {
    queued: Vec<(SocketAddrAny, Vec<u8>)>,
    /// Spent buffers, reused so that queueing a datagram does not allocate.
    spare: Vec<Vec<u8>>,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            queued: Vec::with_capacity(BATCH),
            spare: Vec::with_capacity(BATCH),
        }
    }
}

/// What one [`Outbox::flush`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    pub sent: usize,
    pub calls: usize,
    /// Datagrams the kernel refused for good (e.g. an unreachable address); never retried.
    pub failed: usize,
    /// Still queued: the socket's send buffer was full.
    pub waiting: usize,
}

impl Outbox {
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// A buffer to fill with the next datagram (cleared, its capacity kept).
    pub fn buffer(&mut self) -> Vec<u8> {
        let mut buffer = self.spare.pop().unwrap_or_default();
        buffer.clear();
        buffer
    }

    /// Queues `datagram` for `to`; false (and dropped) when [`MAX_QUEUED`] already wait, the
    /// socket's buffer having been full for that long.
    pub fn push(&mut self, to: SocketAddr, datagram: Vec<u8>) -> bool {
        if self.queued.len() >= MAX_QUEUED {
            return false;
        }
        self.queued.push((SocketAddrAny::from(to), datagram));
        true
    }

    /// Sends what is queued, [`BATCH`] datagrams per call, until it is all sent or the socket
    /// would block (what is left stays queued for the next flush).
    pub fn flush(&mut self, socket: &UdpSocket) -> Flushed {
        let mut flushed = Flushed::default();
        let mut start = 0;
        while start < self.queued.len() {
            let end = (start + BATCH).min(self.queued.len());
            let batch = &self.queued[start..end];
            let slices: Vec<[IoSlice<'_>; 1]> = batch
                .iter()
                .map(|(_, datagram)| [IoSlice::new(datagram)])
                .collect();
            let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = batch
                .iter()
                .map(|_| SendAncillaryBuffer::default())
                .collect();
            let mut headers: Vec<MMsgHdr<'_>> = batch
                .iter()
                .zip(&slices)
                .zip(controls.iter_mut())
                .map(|(((to, _), slice), control)| MMsgHdr::new_with_addr(to, slice, control))
                .collect();
            flushed.calls += 1;
            match sendmmsg(socket, &mut headers, SendFlags::DONTWAIT) {
                // Linux sends at least one of a non-empty batch or fails.
                Ok(0) => break,
                Ok(sent) => {
                    flushed.sent += sent;
                    start += sent;
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::NOBUFS) => break,
                Err(rustix::io::Errno::INTR) => {}
                // The first datagram of the batch cannot go (the others may): it is dropped.
                Err(_) => {
                    flushed.failed += 1;
                    start += 1;
                }
            }
        }
        for (_, buffer) in self.queued.drain(..start) {
            if self.spare.len() < BATCH {
                self.spare.push(buffer);
            }
        }
        flushed.waiting = self.queued.len();
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn bound() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        socket
    }

    /// Receives until `count` datagrams have come (or 2 s pass).
    fn receive_all(
        inbox: &mut Inbox,
        socket: &UdpSocket,
        count: usize,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while got.len() < count && Instant::now() < deadline {
            if inbox.receive(socket).unwrap() == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            got.extend(
                inbox
                    .datagrams()
                    .map(|(peer, bytes)| (peer, bytes.to_vec())),
            );
        }
        got
    }

    #[test]
    fn a_batch_reaches_many_destinations_in_few_calls() {
        let sender = bound();
        let listeners: Vec<UdpSocket> = (0..3).map(|_| bound()).collect();
        let mut outbox = Outbox::default();
        for n in 0..150u16 {
            let listener = &listeners[usize::from(n) % 3];
            let mut datagram = outbox.buffer();
            datagram.extend_from_slice(&n.to_be_bytes());
            assert!(outbox.push(listener.local_addr().unwrap(), datagram));
        }
        let flushed = outbox.flush(&sender);
        assert_eq!(flushed.sent, 150);
        assert_eq!(flushed.calls, 3, "64 + 64 + 22");
        assert_eq!((flushed.failed, flushed.waiting), (0, 0));
        assert!(outbox.is_empty());

        let mut inbox = Inbox::default();
        for (i, listener) in listeners.iter().enumerate() {
            let got = receive_all(&mut inbox, listener, 50);
            assert_eq!(got.len(), 50);
            for (k, (peer, bytes)) in got.iter().enumerate() {
                assert_eq!(*peer, sender.local_addr().unwrap());
                let n = u16::from_be_bytes([bytes[0], bytes[1]]);
                assert_eq!(usize::from(n), i + 3 * k, "in order, to the right listener");
            }
        }
    }

    #[test]
    fn receiving_takes_up_to_a_batch_and_never_waits() {
        let socket = bound();
        let mut inbox = Inbox::default();
        assert_eq!(inbox.receive(&socket).unwrap(), 0, "nothing there: no wait");
        let sender = bound();
        for n in 0..(BATCH + 6) {
            sender
                .send_to(
                    &[u8::try_from(n % 256).unwrap(); 100],
                    socket.local_addr().unwrap(),
                )
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(inbox.receive(&socket).unwrap(), BATCH);
        assert!(inbox.datagrams().all(|(_, bytes)| bytes.len() == 100));
        assert_eq!(inbox.receive(&socket).unwrap(), 6);
        assert_eq!(inbox.datagrams().next().unwrap().1[0], 64);
    }

    #[test]
    fn an_oversized_datagram_is_dropped_not_cut() {
        let socket = bound();
        let sender = bound();
        let to = socket.local_addr().unwrap();
        sender.send_to(&[1; MAX_DATAGRAM + 1], to).unwrap();
        sender.send_to(&[2; 10], to).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut inbox = Inbox::default();
        assert_eq!(inbox.receive(&socket).unwrap(), 2);
        let got: Vec<&[u8]> = inbox.datagrams().map(|(_, bytes)| bytes).collect();
        assert_eq!(got, vec![&[2u8; 10][..]]);
    }

    #[test]
    fn a_datagram_that_cannot_go_does_not_hold_up_the_rest() {
        let sender = bound();
        let listener = bound();
        let mut outbox = Outbox::default();
        // An IPv6 destination from an IPv4 socket: refused by the kernel.
        assert!(outbox.push("[::1]:9".parse().unwrap(), vec![0; 4]));
        assert!(outbox.push(listener.local_addr().unwrap(), vec![7; 4]));
        let flushed = outbox.flush(&sender);
        assert_eq!((flushed.sent, flushed.failed, flushed.waiting), (1, 1, 0));
        let got = receive_all(&mut Inbox::default(), &listener, 1);
        assert_eq!(got[0].1, vec![7; 4]);
    }
}
