//! The listener's connection slots: how many connections one peer and the
//! whole port may hold, and which one makes room when they are full.
//!
//! Every accepted socket takes a slot before anything is done for it, and
//! gives it back when it is dropped. A slot is *handshaking* until the
//! connection is ready for HTTP/2 (its TLS handshake done), then
//! *established*.
//!
//! When a peer is at `max_connections_per_peer`, or the port at
//! `max_connections`, the newcomer takes the slot of the oldest connection
//! still handshaking (of that peer, or of anyone), which is cancelled: a
//! legitimate handshake takes milliseconds, so the oldest one is the one
//! most likely hoarded by a silent or stalling client. Only when every
//! slot is established is the newcomer refused. So a flood of sockets that
//! never finish their handshake cannot keep anyone else out, whatever
//! address it comes from, and one peer cannot hold more than its share of
//! established connections.
//!
//! Peers are counted by IPv4 address, and IPv6 addresses by /64 (one host
//! usually owns a whole /64).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Who a client is, for limits kept per client: its IPv4 address, or the
/// /64 of its IPv6 address (an IPv4-mapped IPv6 address is its IPv4 one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// An IPv4 address.
    V4(std::net::Ipv4Addr),
    /// The first 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl From<IpAddr> for PeerKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => PeerKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey::V4(v4),
                None => PeerKey::V6Prefix((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

/// The slot table of one listening port.
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    inner: Arc<Mutex<Table>>,
}

#[derive(Debug)]
struct Table {
    max_total: usize,
    max_per_peer: usize,
    next_id: u64,
    /// Every live slot: its peer, and whether it is still handshaking.
    live: HashMap<u64, Entry>,
    per_peer: HashMap<PeerKey, PeerSlots>,
    /// Handshaking slots of every peer, oldest (smallest id) first.
    handshaking: BTreeMap<u64, CancellationToken>,
    refused: u64,
    evicted: u64,
}

#[derive(Debug)]
struct Entry {
    peer: PeerKey,
    handshaking: bool,
}

#[derive(Debug, Default)]
struct PeerSlots {
    count: usize,
    /// This peer's handshaking slots, oldest first.
    handshaking: std::collections::BTreeSet<u64>,
}

/// A connection's slot; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    id: u64,
    table: Arc<Mutex<Table>>,
    /// Cancelled when a newcomer takes this slot during the handshake.
    evicted: CancellationToken,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The peer holds its whole share, every connection established.
    PeerFull,
    /// The port is full, every connection established.
    PortFull,
}

/// What the table holds (for tests).
#[cfg(test)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SlotCounts {
    pub(crate) open: usize,
    pub(crate) handshaking: usize,
    pub(crate) refused: u64,
    pub(crate) evicted: u64,
}

// === impl Slots ===

impl Slots {
    pub(crate) fn new(max_total: usize, max_per_peer: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Table {
                max_total: max_total.max(1),
                max_per_peer: max_per_peer.max(1),
                next_id: 0,
                live: HashMap::new(),
                per_peer: HashMap::new(),
                handshaking: BTreeMap::new(),
                refused: 0,
                evicted: 0,
            })),
        }
    }

    /// A handshaking slot for a connection from `ip`, making room by
    /// evicting the oldest handshake if the peer or the port is full.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Slot, Refusal> {
        let peer = PeerKey::from(ip);
        let mut table = self.inner.lock().expect("not poisoned");
        let peer_count = table.per_peer.get(&peer).map_or(0, |p| p.count);
        if peer_count >= table.max_per_peer {
            let oldest = table
                .per_peer
                .get(&peer)
                .and_then(|p| p.handshaking.first().copied());
            match oldest {
                Some(id) => table.evict(id),
                None => {
                    table.refused += 1;
                    return Err(Refusal::PeerFull);
                }
            }
        }
        if table.live.len() >= table.max_total {
            match table.handshaking.first_key_value().map(|(id, _)| *id) {
                Some(id) => table.evict(id),
                None => {
                    table.refused += 1;
                    return Err(Refusal::PortFull);
                }
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let evicted = CancellationToken::new();
        table.live.insert(
            id,
            Entry {
                peer,
                handshaking: true,
            },
        );
        let slots = table.per_peer.entry(peer).or_default();
        slots.count += 1;
        slots.handshaking.insert(id);
        table.handshaking.insert(id, evicted.clone());
        Ok(Slot {
            id,
            table: self.inner.clone(),
            evicted,
        })
    }

    #[cfg(test)]
    pub(crate) fn counts(&self) -> SlotCounts {
        let table = self.inner.lock().expect("not poisoned");
        SlotCounts {
            open: table.live.len(),
            handshaking: table.handshaking.len(),
            refused: table.refused,
            evicted: table.evicted,
        }
    }
}

// === impl Table ===

impl Table {
    /// Frees slot `id` (if still live) and returns its cancel token if it
    /// was handshaking.
    fn release(&mut self, id: u64) -> Option<CancellationToken> {
        let entry = self.live.remove(&id)?;
        if let Some(slots) = self.per_peer.get_mut(&entry.peer) {
            slots.count -= 1;
            slots.handshaking.remove(&id);
            if slots.count == 0 {
                self.per_peer.remove(&entry.peer);
            }
        }
        if entry.handshaking {
            self.handshaking.remove(&id)
        } else {
            None
        }
    }

    fn evict(&mut self, id: u64) {
        if let Some(token) = self.release(id) {
            self.evicted += 1;
            token.cancel();
        }
    }
}

// === impl Slot ===

impl Slot {
    /// Resolves when a newcomer took this slot during the handshake.
    pub(crate) async fn evicted(&self) {
        self.evicted.cancelled().await
    }

    /// The handshake is done: the slot can no longer be taken by a
    /// newcomer. `false` if it was already taken.
    pub(crate) fn established(&self) -> bool {
        let mut table = self.table.lock().expect("not poisoned");
        let Some(entry) = table.live.get_mut(&self.id) else {
            return false;
        };
        entry.handshaking = false;
        let peer = entry.peer;
        table.handshaking.remove(&self.id);
        if let Some(slots) = table.per_peer.get_mut(&peer) {
            slots.handshaking.remove(&self.id);
        }
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut table) = self.table.lock() {
            table.release(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

    #[test]
    fn a_full_peer_makes_room_by_evicting_its_oldest_handshake() {
        let slots = Slots::new(100, 2);
        let first = slots.admit(A).unwrap();
        let second = slots.admit(A).unwrap();
        let third = slots.admit(A).unwrap();
        assert!(
            first.evicted.is_cancelled(),
            "the oldest handshake made room"
        );
        assert!(!second.evicted.is_cancelled());
        assert!(
            !first.established(),
            "an evicted slot cannot be established"
        );
        assert!(third.established());
        assert_eq!(slots.counts().open, 2);
        assert_eq!(slots.counts().evicted, 1);
    }

    #[test]
    fn a_peer_whose_connections_are_all_established_is_refused() {
        let slots = Slots::new(100, 2);
        let held: Vec<Slot> = (0..2).map(|_| slots.admit(A).unwrap()).collect();
        for slot in &held {
            assert!(slot.established());
        }
        assert_eq!(slots.admit(A).unwrap_err(), Refusal::PeerFull);
        // Another peer is not affected, and a closed connection frees its slot.
        let other = slots.admit(B).unwrap();
        drop(held);
        assert!(slots.admit(A).is_ok());
        drop(other);
    }

    #[test]
    fn a_full_port_evicts_the_oldest_handshake_of_anyone_then_refuses() {
        let slots = Slots::new(3, 10);
        let a1 = slots.admit(A).unwrap();
        let a2 = slots.admit(A).unwrap();
        assert!(a2.established());
        let b1 = slots.admit(B).unwrap();
        let b2 = slots.admit(B).unwrap();
        assert!(a1.evicted.is_cancelled(), "A's silent handshake made room");
        assert!(b1.established() && b2.established());
        assert_eq!(slots.admit(B).unwrap_err(), Refusal::PortFull);
        assert_eq!(slots.counts().refused, 1);
        assert_eq!(slots.counts().open, 3);
    }

    #[test]
    fn ipv6_peers_are_counted_by_their_64_bit_prefix() {
        let slots = Slots::new(100, 1);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_host: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_net: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let first = slots.admit(one).unwrap();
        assert!(first.established());
        assert_eq!(slots.admit(same_host).unwrap_err(), Refusal::PeerFull);
        assert!(slots.admit(other_net).is_ok());
        let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped());
        assert_eq!(PeerKey::from(mapped), PeerKey::from(A));
    }
}
