//! Attestation nonces as the gateway hands them out. Asking for a nonce
//! needs no certificate (a device attests to get one), so the book bounds
//! what a stranger can do with that:
//!
//! - each enrolled device holds at most [`PER_DEVICE`] outstanding nonces;
//!   a request beyond that is refused (429), and nothing already issued is
//!   ever forgotten early, so no request made in a device's name can spoil
//!   the nonce that device is quoting over;
//! - each peer address gets at most [`PEER_BURST`] nonces at once and
//!   [`PEER_PER_MINUTE`] a minute after that (429);
//! - the whole book holds at most `capacity` outstanding nonces; when full,
//!   new requests are refused (503) rather than old nonces evicted.
//!
//! Outstanding nonces expire after the window's `ttl` and then count for
//! nothing. A nonce is good once, for the device it was issued to.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use attest::verify::Nonces;

/// Most outstanding nonces per device.
pub const PER_DEVICE: usize = 4;
/// Nonces a peer address may ask for at once.
pub const PEER_BURST: f64 = 20.0;
/// Nonces a peer address may ask for each minute after its burst.
pub const PEER_PER_MINUTE: f64 = 60.0;

/// Why no nonce was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The device holds [`PER_DEVICE`] outstanding nonces.
    #[error("this device holds {PER_DEVICE} outstanding nonces; quote over one of them, or retry when they expire")]
    DeviceBusy,
    /// The peer address asked too fast.
    #[error("too many nonces asked for from this address; retry in a minute")]
    PeerBusy,
    /// The book is full.
    #[error("the gateway holds as many outstanding nonces as it keeps; retry later")]
    Full,
}

/// Why a nonce was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Spent {
    /// Unknown, expired or already used (a replayed quote).
    Stale,
    /// Issued to another device.
    AnotherDevice,
}

/// The gateway's nonces.
#[derive(Debug)]
pub struct NonceBook {
    inner: Mutex<Book>,
}

#[derive(Debug)]
struct Book {
    ttl: Duration,
    capacity: usize,
    window: Nonces,
    owners: HashMap<[u8; 32], String>,
    order: VecDeque<([u8; 32], Instant)>,
    per_device: HashMap<String, usize>,
    peers: HashMap<IpAddr, Bucket>,
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl NonceBook {
    /// Nonces good for `ttl`, at most `capacity` outstanding.
    pub fn new(ttl: Duration, capacity: usize) -> NonceBook {
        NonceBook {
            inner: Mutex::new(Book {
                ttl,
                capacity,
                // One more than the book holds: the window never evicts.
                window: Nonces::new(ttl, capacity.saturating_add(1)),
                owners: HashMap::new(),
                order: VecDeque::new(),
                per_device: HashMap::new(),
                peers: HashMap::new(),
            }),
        }
    }

    /// A fresh nonce for `device`, asked for from `peer`.
    pub fn issue(&self, device: &str, peer: IpAddr) -> Result<[u8; 32], Refusal> {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.expire(now);
        if b.per_device.get(device).copied().unwrap_or(0) >= PER_DEVICE {
            return Err(Refusal::DeviceBusy);
        }
        if b.owners.len() >= b.capacity {
            return Err(Refusal::Full);
        }
        b.take_peer_token(peer, now)?;
        let n = b.window.issue();
        b.owners.insert(n, device.to_owned());
        b.order.push_back((n, now));
        *b.per_device.entry(device.to_owned()).or_default() += 1;
        Ok(n)
    }

    /// Accept `nonce` once, for `device`.
    pub fn take(&self, nonce: &[u8], device: &str) -> Result<(), Spent> {
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let owner = <[u8; 32]>::try_from(nonce)
            .ok()
            .and_then(|n| b.owners.remove(&n));
        if let Some(o) = &owner {
            b.release(o);
        }
        b.window.consume(nonce).map_err(|_| Spent::Stale)?;
        match owner {
            Some(o) if o == device => Ok(()),
            _ => Err(Spent::AnotherDevice),
        }
    }

    /// Outstanding nonces of `device`.
    pub fn outstanding(&self, device: &str) -> usize {
        let b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        b.per_device.get(device).copied().unwrap_or(0)
    }
}

impl Book {
    /// Forget nonces older than the window (the window refuses them too).
    fn expire(&mut self, now: Instant) {
        while let Some((n, at)) = self.order.front().copied() {
            if now.duration_since(at) <= self.ttl {
                break;
            }
            self.order.pop_front();
            if let Some(owner) = self.owners.remove(&n) {
                self.release(&owner);
            }
        }
        if self.peers.len() > 10_000 {
            let full = Duration::from_secs_f64(PEER_BURST * 60.0 / PEER_PER_MINUTE);
            self.peers.retain(|_, b| now.duration_since(b.at) < full);
        }
    }

    /// One outstanding nonce of `device` is gone.
    fn release(&mut self, device: &str) {
        if let Some(n) = self.per_device.get_mut(device) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_device.remove(device);
            }
        }
    }

    /// Spend one of `peer`'s tokens, refilled at [`PEER_PER_MINUTE`].
    fn take_peer_token(&mut self, peer: IpAddr, now: Instant) -> Result<(), Refusal> {
        let b = self.peers.entry(peer).or_insert(Bucket {
            tokens: PEER_BURST,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * PEER_PER_MINUTE / 60.0;
        b.tokens = (b.tokens + refill).min(PEER_BURST);
        b.at = now;
        if b.tokens < 1.0 {
            return Err(Refusal::PeerBusy);
        }
        b.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    /// Regression (issue 22, item 11): requests made in a device's name
    /// cannot spoil the nonce it holds, and a full book refuses instead of
    /// forgetting everyone's nonces.
    #[test]
    fn requests_in_a_victims_name_never_spoil_its_nonce() {
        let book = NonceBook::new(Duration::from_secs(120), 1000);
        let held = book.issue("victim", A).unwrap();
        let mut refused = 0;
        for _ in 0..50 {
            match book.issue("victim", B) {
                Ok(_) => {}
                Err(Refusal::DeviceBusy) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(refused, 50 - (PER_DEVICE - 1));
        assert_eq!(book.take(&held, "victim"), Ok(()));
        assert_eq!(book.take(&held, "victim"), Err(Spent::Stale), "good once");
    }

    #[test]
    fn a_full_book_refuses_and_forgets_nothing() {
        let book = NonceBook::new(Duration::from_secs(120), 3);
        let ips = |i: u8| IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, i));
        let first = book.issue("d0", ips(0)).unwrap();
        book.issue("d1", ips(1)).unwrap();
        book.issue("d2", ips(2)).unwrap();
        assert_eq!(book.issue("d3", ips(3)), Err(Refusal::Full));
        assert_eq!(book.take(&first, "d0"), Ok(()));
        assert!(
            book.issue("d3", ips(3)).is_ok(),
            "a taken nonce frees its place"
        );
    }

    #[test]
    fn a_peer_is_rate_limited_across_devices() {
        let book = NonceBook::new(Duration::from_secs(120), 100_000);
        let mut issued = 0;
        for i in 0..100 {
            match book.issue(&format!("d{i}"), A) {
                Ok(_) => issued += 1,
                Err(e) => assert_eq!(e, Refusal::PeerBusy),
            }
        }
        assert_eq!(issued, PEER_BURST as usize);
        assert!(
            book.issue("d0-other-peer", B).is_ok(),
            "another address is not held up"
        );
    }

    #[test]
    fn a_nonce_is_for_its_device_and_expires() {
        let book = NonceBook::new(Duration::from_millis(50), 100);
        let n = book.issue("d1", A).unwrap();
        assert_eq!(book.take(&n, "d2"), Err(Spent::AnotherDevice));
        assert_eq!(
            book.take(&n, "d1"),
            Err(Spent::Stale),
            "spent by the wrong device's try"
        );
        let old = book.issue("d1", A).unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(book.take(&old, "d1"), Err(Spent::Stale));
        assert_eq!(book.outstanding("d1"), 0);
        assert_eq!(book.take(&[1; 5], "d1"), Err(Spent::Stale));
    }
}
