//! The Socket.IO dialect: the event names of a typical Node.js signaling server, each one
//! replaceable from a TOML file (`--socketio-events`), so that an application moves over
//! without touching its client code even when it named its events otherwise.
//!
//! Imports nothing of the crate: it is read by the configuration and by the ingress.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

/// Event names Socket.IO clients reserve for themselves: an event by one of these names
/// would never reach the application's handlers.
const RESERVED: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];
/// Longest event name accepted (event names are short words; this bounds the file's effect).
const MAX_NAME_BYTES: usize = 64;

/// Every event name of the dialect. Client → server: `join_room`, `leave_room`, and the three
/// signal events (`offer`, `answer`, `ice_candidate`, also server → client) plus `signal` for
/// the native `custom` kind. Server → client: `room_users`, `user_joined`, `user_left`,
/// `server_message` and `error`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dialect {
    pub join_room: String,
    pub leave_room: String,
    pub offer: String,
    pub answer: String,
    pub ice_candidate: String,
    pub signal: String,
    pub room_users: String,
    pub user_joined: String,
    pub user_left: String,
    pub server_message: String,
    pub error: String,
}

impl Default for Dialect {
    fn default() -> Self {
        Self {
            join_room: "join-room".into(),
            leave_room: "leave-room".into(),
            offer: "offer".into(),
            answer: "answer".into(),
            ice_candidate: "ice-candidate".into(),
            signal: "signal".into(),
            room_users: "room-users".into(),
            user_joined: "user-joined".into(),
            user_left: "user-left".into(),
            server_message: "server-message".into(),
            error: "error".into(),
        }
    }
}

/// The file's layout: the names under `[events]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DialectFile {
    #[serde(default)]
    events: Dialect,
}

/// Why a dialect file cannot be used; the message names the file and the event.
#[derive(Debug, thiserror::Error)]
pub enum DialectError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid events file: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: event `{name}` {problem}")]
    Name {
        path: String,
        name: String,
        problem: &'static str,
    },
}

impl Dialect {
    /// Reads and checks a dialect file: `[events]` with any of the names of [`Dialect`]; the
    /// others keep their defaults.
    pub fn load(path: &Path) -> Result<Dialect, DialectError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| DialectError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    fn parse(text: &str, path: &str) -> Result<Dialect, DialectError> {
        let file: DialectFile = toml::from_str(text).map_err(|e| DialectError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        file.events.check(path)?;
        Ok(file.events)
    }

    /// The events a client sends, in a fixed order.
    pub fn client_events(&self) -> [&str; 6] {
        [
            &self.join_room,
            &self.leave_room,
            &self.offer,
            &self.answer,
            &self.ice_candidate,
            &self.signal,
        ]
    }

    /// Every name is usable, and two client events never share a name (the server could not
    /// tell them apart). Server events may share names with client events: the three signal
    /// events do by default.
    fn check(&self, path: &str) -> Result<(), DialectError> {
        let fail = |name: &str, problem| DialectError::Name {
            path: path.to_owned(),
            name: name.to_owned(),
            problem,
        };
        let server = [
            &self.room_users,
            &self.user_joined,
            &self.user_left,
            &self.server_message,
            &self.error,
        ];
        for name in self
            .client_events()
            .into_iter()
            .chain(server.map(String::as_str))
        {
            if name.is_empty() || name.len() > MAX_NAME_BYTES {
                return Err(fail(name, "must be 1 to 64 bytes long"));
            }
            if name.chars().any(char::is_control) {
                return Err(fail(name, "contains control characters"));
            }
            if RESERVED.contains(&name) {
                return Err(fail(name, "is reserved by Socket.IO"));
            }
        }
        let mut seen = HashSet::new();
        for name in self.client_events() {
            if !seen.insert(name) {
                return Err(fail(name, "names two client events"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_replaces_some_names_and_keeps_the_others() {
        let d = Dialect::parse(
            "[events]\njoin_room = \"join\"\nuser_left = \"bye\"\n",
            "f.toml",
        )
        .unwrap();
        assert_eq!(d.join_room, "join");
        assert_eq!(d.user_left, "bye");
        assert_eq!(d.offer, "offer");
        assert_eq!(Dialect::parse("", "f.toml").unwrap(), Dialect::default());
    }

    #[test]
    fn unusable_names_and_unknown_keys_are_refused() {
        for bad in [
            "[events]\njoin_room = \"\"",
            "[events]\njoin_room = \"connect\"",
            "[events]\nleave_room = \"join-room\"",
            "[events]\njoin_rooms = \"x\"",
            "[event]\njoin_room = \"x\"",
            "[events]\nerror = \"a\\nb\"",
        ] {
            assert!(Dialect::parse(bad, "f.toml").is_err(), "{bad}");
        }
    }
}
