//! A real `redis-server` as managed services run it: TLS only (plain TCP off), client
//! certificates required, the default user disabled and one ACL user, `heliograph`, with
//! exactly the rights docs/DEPLOY.md tells operators to grant. The certificates (a CA, a
//! server certificate for 127.0.0.1, a client certificate) are made here with `rcgen`; the
//! user's password is written to a file, as edges read it. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::ports::free_port;
use crate::process::Proc;
use crate::wait::{DEADLINE, until_blocking};

/// The ACL user edges log in as.
pub const USER: &str = "heliograph";
/// Its password: tests check that it never shows on a command line.
pub const PASSWORD: &str = "s3cret-of-the-heliograph-user";

/// The PEM files of a test CA, the server and one client.
pub struct Certificates {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, written to `dir`.
pub fn certificates(dir: &Path) -> Result<Certificates> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // OpenSSL (redis-server) builds chains by name: every certificate gets its own.
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "heliograph test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_pem = ca_params.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf("127.0.0.1")?;
    let (client_cert, client_key) = leaf("heliograph-edge")?;
    let write = |file: &str, text: &str| -> Result<PathBuf> {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    Ok(Certificates {
        ca: write("ca.pem", &ca_pem)?,
        server_cert: write("server.pem", &server_cert)?,
        server_key: write("server-key.pem", &server_key)?,
        client_cert: write("client.pem", &client_cert)?,
        client_key: write("client-key.pem", &client_key)?,
    })
}

/// The running server, its certificates and the password file of [`USER`].
pub struct TlsRedis {
    pub port: u16,
    pub certs: Certificates,
    pub password_file: PathBuf,
    _proc: Proc,
}

impl TlsRedis {
    /// Makes the certificates and the password file in `dir`, starts `redis-server` on a
    /// free TLS port of 127.0.0.1 and waits until that port accepts connections.
    pub fn start(dir: &Path) -> Result<TlsRedis> {
        let certs = certificates(dir)?;
        let password_file = dir.join("redis-password");
        std::fs::write(&password_file, format!("{PASSWORD}\n"))?;
        let port = free_port()?;
        let path = |p: &PathBuf| p.display().to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--bind", "127.0.0.1"])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &path(&certs.server_cert)])
            .args(["--tls-key-file", &path(&certs.server_key)])
            .args(["--tls-ca-cert-file", &path(&certs.ca)])
            .args(["--tls-auth-clients", "yes"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--user", "default", "off"])
            // Exactly the rights docs/DEPLOY.md tells operators to grant.
            .args([
                "--user",
                USER,
                "on",
                &format!(">{PASSWORD}"),
                "~heliograph:*",
                "&heliograph:edge:*",
                "+@read",
                "+@write",
                "+@pubsub",
                "+@scripting",
                "+@connection",
            ]);
        let proc = Proc::spawn(cmd, "redis-server with TLS", None).map_err(|e| {
            e.context("redis-server (Debian package redis-server) must be installed")
        })?;
        until_blocking(DEADLINE, "redis-server to listen on its TLS port", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        })?;
        Ok(TlsRedis {
            port,
            certs,
            password_file,
            _proc: proc,
        })
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }

    /// The edge flags that reach this server: URL, CA, client certificate and key, ACL user
    /// and its password file.
    pub fn edge_args(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        vec![
            "--redis".into(),
            self.url(),
            "--redis-ca".into(),
            path(&self.certs.ca),
            "--redis-client-cert".into(),
            path(&self.certs.client_cert),
            "--redis-client-key".into(),
            path(&self.certs.client_key),
            "--redis-username".into(),
            USER.into(),
            "--redis-password-file".into(),
            path(&self.password_file),
        ]
    }
}
