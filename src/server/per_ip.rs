//! Who a client is, address-wise, and how much one address may do: the real client address
//! behind trusted proxies (`--trust-proxy`), concurrent connections per address
//! (`--max-connections-per-ip`) and upgrades per second per address
//! (`--max-handshakes-per-ip`).
//!
//! Both limits are off by default (load tests and proxies share few addresses). When on, the
//! table is shared by the workers behind one mutex, touched once per upgrade and once per
//! close — never per message. Entries vanish when an address has no connections and a full
//! handshake budget, so the table is bounded by the open connections plus the addresses seen
//! in the last second.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Instant;

/// An address block such as `10.0.0.0/8` or `::1/128` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// True when `ip` lies in the block: its first `prefix` bits are the block's. An IPv4
    /// address is never in an IPv6 block, nor the reverse.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            // An IPv4 client seen through an IPv6 socket.
            (IpAddr::V4(_), IpAddr::V6(ip)) => ip
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy (or `X-Real-IP`).
pub fn client_address(
    peer: IpAddr,
    trusted: &[Cidr],
    x_forwarded_for: Option<&str>,
    x_real_ip: Option<&str>,
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    if let Some(list) = x_forwarded_for {
        // Walk from the nearest hop back; the first untrusted one is the client.
        let mut last_valid = None;
        for entry in list.rsplit(',') {
            let Ok(ip) = entry.trim().parse::<IpAddr>() else {
                break;
            };
            last_valid = Some(ip);
            if !is_trusted(ip) {
                return ip;
            }
        }
        if let Some(ip) = last_valid {
            return ip;
        }
    }
    x_real_ip
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(peer)
}

/// Why an upgrade from this address is refused (429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The address already holds `--max-connections-per-ip` open connections.
    TooManyConnections,
    /// The address's upgrade budget is spent: a token bucket holding `--max-handshakes-per-ip`
    /// and refilled at that many per second.
    TooManyHandshakes,
}

#[derive(Debug)]
struct Entry {
    connections: u32,
    /// Handshake budget left (token bucket, refilled at the per-second rate).
    tokens: f64,
    refilled: Instant,
}

/// The per-address table; `None` limits mean off.
#[derive(Debug)]
pub struct IpLimits {
    max_connections: u32,
    handshakes_per_second: u32,
    table: Mutex<HashMap<IpAddr, Entry>>,
}

impl IpLimits {
    /// `None` when both limits are off: callers then skip all per-address work.
    pub fn new(max_connections: usize, handshakes_per_second: usize) -> Option<IpLimits> {
        (max_connections > 0 || handshakes_per_second > 0).then(|| IpLimits {
            max_connections: u32::try_from(max_connections).unwrap_or(u32::MAX),
            handshakes_per_second: u32::try_from(handshakes_per_second).unwrap_or(u32::MAX),
            table: Mutex::new(HashMap::new()),
        })
    }

    /// An upgrade from `ip` wants to proceed: counts it (then [`IpLimits::release`] must follow
    /// when the connection ends) or says why not.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let Ok(mut table) = self.table.lock() else {
            return Ok(()); // a poisoned table never blocks clients
        };
        let rate = f64::from(self.handshakes_per_second);
        let entry = table.entry(ip).or_insert(Entry {
            connections: 0,
            tokens: rate,
            refilled: now,
        });
        if self.max_connections > 0 && entry.connections >= self.max_connections {
            return Err(Refusal::TooManyConnections);
        }
        if self.handshakes_per_second > 0 {
            let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
            entry.tokens = (entry.tokens + elapsed * rate).min(rate);
            entry.refilled = now;
            if entry.tokens < 1.0 {
                return Err(Refusal::TooManyHandshakes);
            }
            entry.tokens -= 1.0;
        }
        entry.connections += 1;
        Ok(())
    }

    /// A connection admitted from `ip` ended.
    pub fn release(&self, ip: IpAddr, now: Instant) {
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        if let Some(entry) = table.get_mut(&ip) {
            entry.connections = entry.connections.saturating_sub(1);
        }
        // Drop idle entries now and then, so addresses that came and went don't pile up.
        if table.len() > 1024 {
            let rate = f64::from(self.handshakes_per_second);
            table.retain(|_, e| {
                let full = e.tokens
                    + now.saturating_duration_since(e.refilled).as_secs_f64() * rate
                    >= rate;
                e.connections > 0 || !full
            });
        } else if table
            .get(&ip)
            .is_some_and(|e| e.connections == 0 && self.handshakes_per_second == 0)
        {
            table.remove(&ip);
        }
    }

    /// Addresses tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.table.lock().map_or(0, |t| t.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        assert!("127.0.0.1"
            .parse::<Cidr>()
            .unwrap()
            .contains(ip("127.0.0.1")));
        assert!(!"127.0.0.1"
            .parse::<Cidr>()
            .unwrap()
            .contains(ip("127.0.0.2")));
        assert!("::1/128".parse::<Cidr>().unwrap().contains(ip("::1")));
        assert!("10.0.0.0/8"
            .parse::<Cidr>()
            .unwrap()
            .contains(ip("::ffff:10.9.9.9")));
        for bad in ["10.0.0.0/33", "x", "::/129", "1.2.3.4/"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn client_address_trusts_only_trusted_proxies() {
        let trusted: Vec<Cidr> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        // An untrusted peer's headers are ignored.
        assert_eq!(
            client_address(ip("1.2.3.4"), &trusted, Some("9.9.9.9"), None),
            ip("1.2.3.4")
        );
        // Behind nginx: the right-most untrusted hop is the client; spoofed left entries lose.
        assert_eq!(
            client_address(
                ip("127.0.0.1"),
                &trusted,
                Some("6.6.6.6, 5.5.5.5, 10.0.0.7"),
                None
            ),
            ip("5.5.5.5")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), &trusted, None, Some("7.7.7.7")),
            ip("7.7.7.7")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), &trusted, Some("garbage"), None),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), &[], Some("5.5.5.5"), None),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn connection_and_handshake_limits() {
        let now = Instant::now();
        let limits = IpLimits::new(2, 0).unwrap();
        assert!(limits.admit(ip("1.1.1.1"), now).is_ok());
        assert!(limits.admit(ip("1.1.1.1"), now).is_ok());
        assert_eq!(
            limits.admit(ip("1.1.1.1"), now),
            Err(Refusal::TooManyConnections)
        );
        assert!(limits.admit(ip("2.2.2.2"), now).is_ok());
        limits.release(ip("1.1.1.1"), now);
        assert!(limits.admit(ip("1.1.1.1"), now).is_ok());

        let limits = IpLimits::new(0, 3).unwrap();
        for _ in 0..3 {
            assert!(limits.admit(ip("3.3.3.3"), now).is_ok());
        }
        assert_eq!(
            limits.admit(ip("3.3.3.3"), now),
            Err(Refusal::TooManyHandshakes)
        );
        // A third of a second later one more token has come back.
        let later = now + Duration::from_millis(340);
        assert!(limits.admit(ip("3.3.3.3"), later).is_ok());
        assert_eq!(
            limits.admit(ip("3.3.3.3"), later),
            Err(Refusal::TooManyHandshakes)
        );
        assert!(IpLimits::new(0, 0).is_none());
    }

    #[test]
    fn table_is_pruned() {
        let now = Instant::now();
        let limits = IpLimits::new(5, 0).unwrap();
        for i in 0..3000u32 {
            let addr = IpAddr::from(i.to_be_bytes());
            limits.admit(addr, now).unwrap();
            limits.release(addr, now);
        }
        assert!(limits.tracked() <= 1025, "{}", limits.tracked());
    }
}
