//! API keys of the server API: several named keys at once (so one can be rotated while the
//! other still works), read from files or the environment, never from the command line, and
//! compared in constant time.

use std::path::Path;

use subtle::ConstantTimeEq;

/// Shortest key accepted, in bytes: a key is a bearer secret, so it must not be guessable.
pub const MIN_KEY_BYTES: usize = 24;
/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Longest key name, in bytes (names appear in logs and metrics, never the keys).
pub const MAX_NAME_BYTES: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("an API key needs a NAME=... form, got {0:?}")]
    Form(String),
    #[error("API key name {0:?}: 1-64 characters of [A-Za-z0-9_.-]")]
    Name(String),
    #[error("API key {0:?} appears twice")]
    Duplicate(String),
    #[error("API key {0:?}: {MIN_KEY_BYTES}-{MAX_KEY_BYTES} printable ASCII characters")]
    Key(String),
    #[error("API key {0:?} is the cluster secret; give the server API its own keys")]
    ClusterSecret(String),
    #[error("reading API key file {path}: {error}")]
    File { path: String, error: String },
}

/// The configured keys. Without any, every request of the server API is refused.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ApiKeys")
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl ApiKeys {
    /// Keys from `files` (`NAME=PATH`, the file holding the key; a trailing newline is
    /// ignored) and from `env` (`NAME=KEY` items separated by commas, the value of
    /// `HELIOGRAPH_API_KEYS`). A key equal to `cluster_secret` is refused.
    pub fn load(
        files: &[String],
        env: Option<&str>,
        cluster_secret: &str,
    ) -> Result<Self, KeyError> {
        let mut keys = Self::default();
        for item in files {
            let (name, path) = item
                .split_once('=')
                .ok_or_else(|| KeyError::Form(item.clone()))?;
            let key = std::fs::read_to_string(Path::new(path)).map_err(|e| KeyError::File {
                path: path.to_owned(),
                error: e.to_string(),
            })?;
            keys.add(name, key.trim_end_matches(['\n', '\r']), cluster_secret)?;
        }
        for item in env
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.trim().is_empty())
        {
            let (name, key) = item
                .trim()
                .split_once('=')
                .ok_or_else(|| KeyError::Form("<redacted>".into()))?;
            keys.add(name, key, cluster_secret)?;
        }
        Ok(keys)
    }

    fn add(&mut self, name: &str, key: &str, cluster_secret: &str) -> Result<(), KeyError> {
        if !valid_name(name) {
            return Err(KeyError::Name(name.to_owned()));
        }
        if self.keys.iter().any(|(n, _)| n == name) {
            return Err(KeyError::Duplicate(name.to_owned()));
        }
        let printable = key.bytes().all(|b| b.is_ascii_graphic());
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) || !printable {
            return Err(KeyError::Key(name.to_owned()));
        }
        if bool::from(key.as_bytes().ct_eq(cluster_secret.as_bytes())) {
            return Err(KeyError::ClusterSecret(name.to_owned()));
        }
        self.keys.push((name.to_owned(), key.as_bytes().to_vec()));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(n, _)| n.as_str())
    }

    /// The name of the key `presented` is, if any. Every key is compared (in constant time
    /// for keys of the same length), so the answer's timing does not tell which one matched
    /// or how much of it did.
    pub fn check(&self, presented: &[u8]) -> Option<&str> {
        let mut found = None;
        for (name, key) in &self.keys {
            if bool::from(key.as_slice().ct_eq(presented)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn several_named_keys_from_files_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, format!("{A}\n")).unwrap();
        let keys = ApiKeys::load(
            &[format!("old={}", file.display())],
            Some(&format!("new={B}")),
            "the-cluster-secret",
        )
        .unwrap();
        assert_eq!(keys.check(A.as_bytes()), Some("old"));
        assert_eq!(keys.check(B.as_bytes()), Some("new"));
        assert_eq!(keys.check(b"the-cluster-secret"), None);
        assert_eq!(keys.check(b""), None);
        assert!(!format!("{keys:?}").contains(A), "keys are never printed");
    }

    #[test]
    fn bad_keys_are_refused() {
        let load = |env: &str| ApiKeys::load(&[], Some(env), A).unwrap_err();
        assert_eq!(load("x=short"), KeyError::Key("x".into()));
        assert_eq!(load(&format!("x={A}")), KeyError::ClusterSecret("x".into()));
        assert_eq!(load(&format!("x y={B}")), KeyError::Name("x y".into()));
        assert_eq!(
            load(&format!("x={B},x={B}")),
            KeyError::Duplicate("x".into())
        );
        assert!(matches!(load("novalue"), KeyError::Form(_)));
    }
}
