//! Which connection a datagram is for, on the one socket every connection of a media thread
//! shares: by the address it came from once that address is known, and before that by the
//! STUN USERNAME of the client's binding request, whose first half is the ICE ufrag the
//! server gave that connection (ICE-lite: the client always checks first).
//!
//! An address is learned only from what a connection itself sends to it (its answer to a
//! binding request whose integrity it checked), never from a request alone: a stranger who
//! saw a ufrag cannot claim an address for a connection, nor fill its table.

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

    /// The connection `datagram` from `from` is for, if any.
    pub fn route(&self, from: SocketAddr, datagram: &[u8]) -> Option<ConnectionId> {
        if let Some(connection) = self.by_address.get(&from) {
            return Some(*connection);
        }
        self.by_ufrag.get(local_ufrag(datagram)?.as_str()).copied()
    }

    /// `connection` sent to `to`: datagrams from `to` are its from now on (up to
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
        demux.sent(2, addr(5000));
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
    fn a_connection_holds_a_bounded_number_of_addresses() {
        let mut demux = Demux::default();
        demux.expect(1, "aaaa1111".into());
        for port in 0..100 {
            demux.sent(1, addr(port));
        }
        let routed = (0..100).filter(|port| demux.route(addr(*port), b"x").is_some());
        assert_eq!(routed.count(), MAX_ADDRESSES);
    }
}
