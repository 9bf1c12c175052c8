//! Which connection a datagram is for, on the one socket every connection of a media thread
//! shares: by the address it came from once that address is known, and before that by the
//! STUN USERNAME of the client's binding request, whose first half is the ICE ufrag the
//! server gave that connection (ICE-lite: the client always checks first).
//!
//! An address is learned only from a connection's answer to a binding request there (a
//! success response, sent only for a request whose integrity it checked), never from a
//! request alone or from anything else it sends: a stranger who saw a ufrag cannot claim an
//! address for a connection, nor fill its table, and a client cannot make its connection
//! claim another client's address by sending checks there. Binding requests that would make
//! the server the controlling agent are refused before they reach a connection
//! ([`refused`]): a lite agent is always controlled, and a controlling one checks (and sends
//! to) whatever candidates its client names.

use std::collections::HashMap;
use std::net::SocketAddr;

use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::message::{Message, is_stun_message};
use rtc::stun::textattrs::TextAttribute;

/// A connection on a media thread.
pub type ConnectionId = u64;

/// Addresses one connection may be reached at (its client's candidates that answered); a
/// client rarely has more than a few.
const MAX_ADDRESSES: usize = 8;

#[derive(Default)]
pub struct Demux {
    by_address: HashMap<SocketAddr, ConnectionId>,
    by_ufrag: HashMap<String, ConnectionId>,
    addresses: HashMap<ConnectionId, Vec<SocketAddr>>,
}

impl Demux {
    /// A new connection, reached by binding requests for `ufrag` until its address is known.
    pub fn expect(&mut self, connection: ConnectionId, ufrag: String) {
        self.by_ufrag.insert(ufrag, connection);
        self.addresses.entry(connection).or_default();
    }

    /// The connection `datagram` from `from` is for, if any. A STUN request naming a known
    /// ufrag goes to that connection whatever its address; one from a new address is refused
    /// once the connection has [`MAX_ADDRESSES`] (each new address costs its ICE agent a
    /// candidate and a pair it keeps).
    pub fn route(&self, from: SocketAddr, datagram: &[u8]) -> Option<ConnectionId> {
        if let Some(ufrag) = local_ufrag(datagram) {
            let connection = *self.by_ufrag.get(ufrag.as_str())?;
            let known = self.by_address.get(&from) == Some(&connection);
            let full = self
                .addresses
                .get(&connection)
                .is_some_and(|addresses| addresses.len() >= MAX_ADDRESSES);
            return (known || !full).then_some(connection);
        }
        self.by_address.get(&from).copied()
    }

    /// What `connection` sends to `to`: a binding success response teaches the address.
    pub fn sent_datagram(&mut self, connection: ConnectionId, to: SocketAddr, datagram: &[u8]) {
        if stun_type(datagram) == Some(BINDING_SUCCESS) {
            self.sent(connection, to);
        }
    }

    /// `connection` answered a check from `to`: datagrams from `to` are its from now on (up to
    /// [`MAX_ADDRESSES`] per connection; an address another connection had moves here, as a
    /// client that reconnects from the same port does).
    pub fn sent(&mut self, connection: ConnectionId, to: SocketAddr) {
        if self.by_address.get(&to) == Some(&connection) {
            return;
        }
        let Some(known) = self.addresses.get(&connection) else {
            return; // removed meanwhile
        };
        if known.len() >= MAX_ADDRESSES {
            return;
        }
        if let Some(previous) = self.by_address.insert(to, connection)
            && let Some(theirs) = self.addresses.get_mut(&previous)
        {
            theirs.retain(|address| *address != to);
        }
        if let Some(known) = self.addresses.get_mut(&connection) {
            known.push(to);
        }
    }

    /// Forgets `connection`: its ufrag and addresses route nowhere.
    pub fn remove(&mut self, connection: ConnectionId) {
        for address in self.addresses.remove(&connection).unwrap_or_default() {
            if self.by_address.get(&address) == Some(&connection) {
                self.by_address.remove(&address);
            }
        }
        self.by_ufrag.retain(|_, owner| *owner != connection);
    }

    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }
}

const BINDING_REQUEST_TYPE: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_ICE_CONTROLLED: u16 = 0x8029;

/// RTP or RTCP (first byte 128–191, RFC 7983), as opposed to STUN and DTLS.
pub fn is_media(datagram: &[u8]) -> bool {
    datagram
        .first()
        .is_some_and(|&first| (128..=191).contains(&first))
}

/// A STUN message's type, if `datagram` is one.
fn stun_type(datagram: &[u8]) -> Option<u16> {
    if !is_stun_message(datagram) {
        return None;
    }
    Some(u16::from_be_bytes([datagram[0], datagram[1]]))
}

/// Whether `datagram` is a binding request that must not reach a connection: one asking
/// the server to be the controlling agent (ICE-CONTROLLED), which a lite agent never is.
pub fn refused(datagram: &[u8]) -> bool {
    if stun_type(datagram) != Some(BINDING_REQUEST_TYPE) {
        return false;
    }
    // Attributes: type (2), length (2), value padded to 4 bytes; after the 20-byte header.
    let mut rest = datagram.get(20..).unwrap_or_default();
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        if kind == ATTR_ICE_CONTROLLED {
            return true;
        }
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let Some(next) = rest.get(4 + len.next_multiple_of(4)..) else {
            break;
        };
        rest = next;
    }
    false
}

/// The receiver's half of a STUN USERNAME (`<server ufrag>:<client ufrag>`).
fn local_ufrag(datagram: &[u8]) -> Option<String> {
    if !is_stun_message(datagram) {
        return None;
    }
    let mut message = Message::new();
    message.unmarshal_binary(datagram).ok()?;
    let username = TextAttribute::get_from_as(&message, ATTR_USERNAME).ok()?;
    let (local, _) = username.text.split_once(':')?;
    Some(local.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::stun::message::{BINDING_REQUEST, Setter};

    fn binding_request(username: &str) -> Vec<u8> {
        let mut message = Message::new();
        let username = TextAttribute::new(ATTR_USERNAME, username.to_owned());
        let setters: [Box<dyn Setter>; 2] = [Box::new(BINDING_REQUEST), Box::new(username)];
        message.build(&setters).unwrap();
        message.raw
    }

    const SUCCESS: &[u8] = &[
        0x01, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn first_by_ufrag_then_by_the_address_the_connection_answered() {
        let mut demux = Demux::default();
        demux.expect(1, "aaaa1111".into());
        demux.expect(2, "bbbb2222".into());
        let request = binding_request("bbbb2222:client");
        assert_eq!(demux.route(addr(5000), &request), Some(2));
        // Media before the connection answered that address: not routed.
        assert_eq!(demux.route(addr(5000), &[0x80, 0x6f, 0, 1]), None);
        // What the connection sends there is not an answer to a check: nothing learned.
        demux.sent_datagram(2, addr(5000), &[0x80, 0x6f, 0, 1]);
        demux.sent_datagram(2, addr(5000), &binding_request("client:bbbb2222"));
        assert_eq!(demux.route(addr(5000), &[0x80, 0x6f, 0, 1]), None);
        demux.sent_datagram(2, addr(5000), SUCCESS);
        assert_eq!(demux.route(addr(5000), &[0x80, 0x6f, 0, 1]), Some(2));
        // Unknown ufrags, the remote half, junk and non-STUN: nowhere.
        assert_eq!(
            demux.route(addr(1), &binding_request("cccc:bbbb2222")),
            None
        );
        assert_eq!(demux.route(addr(1), &binding_request("bbbb2222")), None);
        assert_eq!(demux.route(addr(1), &[0, 1, 0, 0]), None);
        assert_eq!(demux.route(addr(1), b"\x16\xfe\xfd dtls"), None);
    }

    #[test]
    fn removed_connections_route_nowhere_and_addresses_move() {
        let mut demux = Demux::default();
        demux.expect(1, "aaaa1111".into());
        demux.expect(2, "bbbb2222".into());
        demux.sent(1, addr(5000));
        // The same client address, now answered by another connection (a reconnect).
        demux.sent(2, addr(5000));
        assert_eq!(demux.route(addr(5000), b"x"), Some(2));
        demux.remove(1);
        assert_eq!(
            demux.route(addr(5000), b"x"),
            Some(2),
            "not taken from its new owner"
        );
        demux.remove(2);
        assert_eq!(demux.route(addr(5000), b"x"), None);
        assert_eq!(demux.route(addr(1), &binding_request("bbbb2222:c")), None);
        assert!(demux.is_empty());
        demux.sent(2, addr(6000));
        assert_eq!(
            demux.route(addr(6000), b"x"),
            None,
            "a removed connection learns nothing"
        );
    }

    #[test]
    fn requests_to_be_controlled_by_the_server_are_refused() {
        let plain = binding_request("aaaa1111:client");
        assert!(!refused(&plain));
        let mut message = Message::new();
        let setters: [Box<dyn Setter>; 3] = [
            Box::new(BINDING_REQUEST),
            Box::new(TextAttribute::new(ATTR_USERNAME, "aaaa1111:client".into())),
            Box::new(rtc::ice::attributes::control::AttrControlled(1)),
        ];
        message.build(&setters).unwrap();
        assert!(refused(&message.raw));
        assert!(!refused(&[0x80, 0x6f, 0, 1]));
        assert!(!refused(SUCCESS));
    }

    #[test]
    fn a_connection_holds_a_bounded_number_of_addresses() {
        let mut demux = Demux::default();
        demux.expect(1, "aaaa1111".into());
        for port in 0..100 {
            demux.sent(1, addr(port));
        }
        let routed = (0..100).filter(|port| demux.route(addr(*port), b"x").is_some());
        assert_eq!(routed.count(), MAX_ADDRESSES);
        // Checks from yet another address are not taken: its table is full.
        let request = binding_request("aaaa1111:client");
        assert_eq!(demux.route(addr(500), &request), None);
        assert_eq!(
            demux.route(addr(0), &request),
            Some(1),
            "known addresses still are"
        );
    }
}
