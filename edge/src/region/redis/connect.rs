//! How the edge reaches its region's Redis: the URL (`redis://` or `rediss://`), optional TLS
//! material (a CA bundle, a client certificate), an ACL user and password kept out of the
//! command line, and how many multiplexed connections the session store spreads its calls
//! over. Everything is checked before anything connects.

use std::fmt;

use redis::{ClientTlsConfig, IntoConnectionInfo, TlsCertificates};

use crate::region::error::UrlError;

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
    /// A client for these settings (nothing connects yet).
    pub(crate) fn client(&self) -> Result<redis::Client, UrlError> {
        let info = self
            .url
            .as_str()
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
                if !self.url.starts_with("rediss://") {
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
        };
        assert!(matches!(s.client(), Err(UrlError::TlsWithoutRediss)));
    }
}
