//! `floor`: what one small loopback TCP send costs this machine's kernel, with no WebSocket
//! server involved. A push server's fan-out writes one such segment per subscriber, so
//! `sends × cost` bounds from below how fast any server on this machine can reach them all
//! from one core. On loopback the cost includes the receiver's TCP processing, which the kernel
//! runs inline on the sending core.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Instant;

/// The measurement: per-send cost in microseconds, pass by pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Floor {
    pub sockets: usize,
    pub size: usize,
    pub per_send_us: Vec<f64>,
}

impl Floor {
    pub fn median_us(&self) -> f64 {
        let mut sorted = self.per_send_us.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
    }
}

/// Opens `sockets` loopback connection pairs, then `passes` times writes `size` bytes on each
/// accepted socket (timed) and reads them back on the other end (not timed).
pub fn measure(sockets: usize, passes: usize, size: usize) -> io::Result<Floor> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr: SocketAddr = listener.local_addr()?;
    let mut pairs = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        server.set_nodelay(true)?;
        pairs.push((server, client));
    }
    let message = vec![b'x'; size.max(1)];
    let mut back = vec![0u8; message.len()];
    let mut per_send_us = Vec::with_capacity(passes);
    for _ in 0..passes {
        let start = Instant::now();
        for (server, _) in &mut pairs {
            server.write_all(&message)?;
        }
        let elapsed = start.elapsed();
        per_send_us.push(elapsed.as_secs_f64() * 1e6 / sockets.max(1) as f64);
        for (_, client) in &mut pairs {
            client.read_exact(&mut back)?;
        }
    }
    Ok(Floor {
        sockets,
        size: message.len(),
        per_send_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_every_pass_and_delivers_every_byte() {
        let floor = measure(8, 3, 70).unwrap();
        assert_eq!(floor.per_send_us.len(), 3);
        assert!(floor.per_send_us.iter().all(|&us| us > 0.0));
        assert!(floor.median_us() > 0.0);
        assert_eq!((floor.sockets, floor.size), (8, 70));
    }
}
