//! A real `redis-server` without persistence on a free port; killed on drop.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::process::Proc;
use crate::wait::{self, DEADLINE};

pub struct Redis {
    pub ip: IpAddr,
    pub port: u16,
    proc: Option<Proc>,
}

impl Redis {
    /// Starts on a free port of 127.0.0.1 and waits until it answers PING.
    #[allow(clippy::panic)]
    pub fn start() -> Redis {
        Redis::start_on(Ipv4Addr::LOCALHOST.into()).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts on a free port of `ip` and waits until it answers PING.
    pub fn start_on(ip: IpAddr) -> Result<Redis> {
        let mut r = Redis {
            ip,
            port: crate::ports::free_port_on(ip)?,
            proc: None,
        };
        r.try_restart()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://{}:{}/", self.ip, self.port)
    }

    /// kill -9: clients see their connections reset.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// Starts (again) on the same port and waits until it answers PING.
    #[allow(clippy::panic)]
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn try_restart(&mut self) -> Result<()> {
        self.kill();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", &self.ip.to_string()])
            .args(["--save", "", "--appendonly", "no"]);
        self.proc = Some(
            Proc::spawn(cmd, "redis-server (Debian package redis-server)", None)
                .map_err(|e| e.context("redis-server must be installed"))?,
        );
        wait::until_blocking(DEADLINE, "redis-server to answer PING", || {
            self.answers().then_some(())
        })
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect((self.ip, self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}
