//! Free ports, for the few listeners that must be told their port before they start (Redis,
//! and replicas whose peers must know their addresses in advance). Everything else binds
//! port 0 and reports what it got.

use std::net::{IpAddr, Ipv4Addr};

/// A port that was free on `ip` a moment ago.
pub fn free_port_on(ip: IpAddr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    free_port_on(Ipv4Addr::LOCALHOST.into())
}

/// A port that was free on `ip` a moment ago, below the kernel's ephemeral range (32768 and up
/// by default), for a listener that must get the same port back after a restart: a port from
/// port 0 lies in the ephemeral range, where any outgoing connection on the machine may take
/// it while the process is down ("Address already in use" at the restart).
pub fn restartable_port_on(ip: IpAddr) -> std::io::Result<u16> {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        .wrapping_add(std::process::id().wrapping_mul(7_919));
    for i in 0..SPAN {
        let port = u16::try_from(FIRST + (seed.wrapping_add(i.wrapping_mul(97))) % SPAN)
            .unwrap_or(u16::MAX);
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    free_port_on(ip)
}
