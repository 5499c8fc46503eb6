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
