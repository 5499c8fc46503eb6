//! How the edge reaches its region's Redis: the URL (`redis://` or `rediss://`), optional TLS
//! material (a CA bundle, a client certificate), an ACL user and password kept out of the
//! command line, and how many multiplexed connections the session store spreads its calls
//! over; or, with Redis Sentinel, which master to connect to now: every new connection asks
//! the sentinels, so that a failover is followed by the next reconnect. Everything is checked
//! before anything connects.

use std::fmt;
use std::time::Duration;

use redis::{ClientTlsConfig, IntoConnectionInfo, TlsCertificates};

use crate::region::error::UrlError;

/// How long one sentinel may take to name the master before the next one is asked.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);

/// Default number of multiplexed connections of the session store.
pub const DEFAULT_REDIS_CONNECTIONS: usize = 4;

/// PEM material for `rediss://`.
#[derive(Clone, Default)]
pub struct RedisTls {
    /// CA bundle that signed the server's certificate (else the system's roots).
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and key, when the server asks for one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// Where and how to connect.
#[derive(Clone)]
pub struct RedisSettings {
    pub url: String,
    pub tls: Option<RedisTls>,
    /// ACL user (`AUTH username password`); overrides one in the URL.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Multiplexed connections of the session store (at least 1).
    pub connections: usize,
    /// Signals queued for publishing before new ones take the coordinator path.
    pub publish_queue: usize,
    /// Redis Sentinel: the master is the one these sentinels name now (`url` then gives only
    /// the scheme, database and credentials).
    pub sentinel: Option<Sentinel>,
}

/// The sentinels of a Redis master group.
#[derive(Clone)]
pub struct Sentinel {
    /// `host:port` of each sentinel, asked in turn.
    pub addrs: Vec<String>,
    /// The master group's name (`sentinel monitor <name> …`).
    pub master: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for RedisSettings {
    /// Never prints a password, in the URL or beside it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field(
                "tls",
                &self
                    .tls
                    .as_ref()
                    .map(|t| (t.ca.is_some(), t.client.is_some())),
            )
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connections", &self.connections)
            .field("publish_queue", &self.publish_queue)
            .field(
                "sentinel",
                &self
                    .sentinel
                    .as_ref()
                    .map(|s| (&s.addrs, &s.master, &s.username)),
            )
            .finish()
    }
}

/// The URL with any password replaced.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:<redacted>{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl RedisSettings {
    /// A client for these settings (nothing connects yet): for the URL's server, or with
    /// Sentinel a template whose address is replaced by [`Self::master_client`].
    pub(crate) fn client(&self) -> Result<redis::Client, UrlError> {
        if let Some(sentinel) = &self.sentinel {
            if sentinel.addrs.is_empty() || sentinel.master.is_empty() {
                return Err(UrlError::SentinelIncomplete);
            }
            for addr in &sentinel.addrs {
                sentinel_client(addr, sentinel).map_err(UrlError::Url)?;
            }
            // The URL is a template: check it with a stand-in address.
            return self.client_for(&master_url(&self.url, "127.0.0.1", 6379));
        }
        self.client_for(&self.url)
    }

    /// A client for the current master: the URL's server, or the one the first sentinel that
    /// answers names now.
    pub(crate) async fn master_client(&self) -> Result<redis::Client, redis::RedisError> {
        let Some(sentinel) = &self.sentinel else {
            return self.client_for(&self.url).map_err(UrlError::into_redis);
        };
        let mut last = None;
        for addr in &sentinel.addrs {
            let asked = tokio::time::timeout(SENTINEL_TIMEOUT, async {
                let mut conn = sentinel_client(addr, sentinel)?
                    .get_multiplexed_async_connection()
                    .await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&sentinel.master)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            })
            .await;
            match asked {
                Ok(Ok(Some((host, port)))) => {
                    let url = master_url(&self.url, &host, port);
                    return self.client_for(&url).map_err(UrlError::into_redis);
                }
                Ok(Ok(None)) => last = Some(format!("{addr} knows no master {}", sentinel.master)),
                Ok(Err(e)) => last = Some(format!("{addr}: {e}")),
                Err(_) => last = Some(format!("{addr}: timed out")),
            }
        }
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no sentinel named a master",
            last.unwrap_or_default(),
        )))
    }

    fn client_for(&self, url: &str) -> Result<redis::Client, UrlError> {
        let info = url
            .into_connection_info()
            .map_err(UrlError::Url)?
            // Signals are small and latency-bound: never hold one back for Nagle.
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let mut auth = info.redis_settings().clone();
        if let Some(user) = &self.username {
            auth = auth.set_username(user);
        }
        if let Some(password) = &self.password {
            auth = auth.set_password(password);
        }
        let info = info.set_redis_settings(auth);
        match &self.tls {
            None => redis::Client::open(info).map_err(UrlError::Url),
            Some(tls) => {
                if !url.starts_with("rediss://") {
                    return Err(UrlError::TlsWithoutRediss);
                }
                let certs = TlsCertificates {
                    client_tls: tls.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.clone(),
                    }),
                    root_cert: tls.ca.clone(),
                };
                redis::Client::build_with_tls(info, certs).map_err(UrlError::Tls)
            }
        }
    }
}

/// `template` (scheme, credentials, database) pointed at `host:port`.
fn master_url(template: &str, host: &str, port: u16) -> String {
    let (scheme, rest) = template.split_once("://").unwrap_or(("redis", template));
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((user, rest)) => (format!("{user}@"), rest),
        None => (String::new(), rest),
    };
    let db = rest.split_once('/').map_or("", |(_, db)| db);
    format!("{scheme}://{userinfo}{host}:{port}/{db}")
}

fn sentinel_client(addr: &str, sentinel: &Sentinel) -> redis::RedisResult<redis::Client> {
    let info = format!("redis://{addr}/").into_connection_info()?;
    let mut auth = info.redis_settings().clone();
    if let Some(user) = &sentinel.username {
        auth = auth.set_username(user);
    }
    if let Some(password) = &sentinel.password {
        auth = auth.set_password(password);
    }
    redis::Client::open(info.set_redis_settings(auth))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact_url("rediss://app:hunter2@redis.example:6380/0"),
            "rediss://app:<redacted>@redis.example:6380/0"
        );
        assert_eq!(
            redact_url("redis://10.0.0.7:6379/"),
            "redis://10.0.0.7:6379/"
        );
        let s = RedisSettings {
            url: "redis://:hunter2@h/".into(),
            tls: None,
            username: None,
            password: Some("also-secret".into()),
            connections: 1,
            publish_queue: 1,
            sentinel: None,
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("also-secret"),
            "{shown}"
        );
    }

    #[test]
    fn tls_material_needs_a_rediss_url() {
        let s = RedisSettings {
            url: "redis://127.0.0.1:6379/".into(),
            tls: Some(RedisTls::default()),
            username: None,
            password: None,
            connections: 1,
            publish_queue: 1,
            sentinel: None,
        };
        assert!(matches!(s.client(), Err(UrlError::TlsWithoutRediss)));
    }

    #[test]
    fn the_master_keeps_the_templates_scheme_credentials_and_database() {
        assert_eq!(
            master_url("rediss://app:pw@ignored:1/2", "10.0.0.9", 6380),
            "rediss://app:pw@10.0.0.9:6380/2"
        );
        assert_eq!(master_url("redis://", "h", 6379), "redis://h:6379/");
    }
}
