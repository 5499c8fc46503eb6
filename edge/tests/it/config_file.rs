//! `--config FILE`: flags over environment over file over defaults, unknown keys refused by
//! name, and `--print-config` without secrets. The real binary, its environment set per
//! child (never the test's own).

use std::path::Path;
use std::process::{Command, Output};

use heliograph_testkit::process;

use crate::support::{DEADLINE, Node};

fn edge(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_heliograph-edge"));
    cmd.env_clear().args(args).envs(env.iter().copied());
    process::run(cmd, DEADLINE).unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn stdout(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The one line on stderr of a configuration error (exit 64).
fn config_error(out: &Output) -> String {
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn config_file_is_under_env_which_is_under_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "edge.toml",
        r#"
region = "file-region"
max_connections_per_ip = 11
rate_limit_burst = 12
ping_interval_ms = 1000
trusted_proxies = ["10.0.0.0/8", "192.168.0.0/16"]
proxy_protocol = true
"#,
    );
    let out = edge(
        &[
            "--config",
            &file,
            "--print-config",
            "--max-connections-per-ip",
            "31",
            "--ping-interval-ms",
            "2000",
        ],
        &[
            ("HELIOGRAPH_REGION", "env-region"),
            ("HELIOGRAPH_MAX_CONNECTIONS_PER_IP", "21"),
            ("HELIOGRAPH_RATE_LIMIT_PER_SECOND", "22"),
        ],
    );
    let printed = stdout(&out);
    for line in [
        // flag > env > file
        "max_connections_per_ip = 31  # flag",
        // flag > file
        "ping_interval_ms = 2000  # flag",
        // env > file
        r#"region = "env-region"  # env"#,
        // env > default
        "rate_limit_per_second = 22  # env",
        // file > default
        "rate_limit_burst = 12  # file",
        r#"trusted_proxies = ["10.0.0.0/8", "192.168.0.0/16"]  # file"#,
        "proxy_protocol = true  # file",
        // default
        "max_connections = 100000  # default",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line}\n{printed}");
    }
    // The file named by the environment works the same.
    let out = edge(&["--print-config"], &[("HELIOGRAPH_CONFIG", &file)]);
    assert!(stdout(&out).contains(r#"region = "file-region"  # file"#));
}

#[tokio::test]
async fn settings_from_the_file_take_effect() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "edge.toml", "max_connections_per_ip = 1\n");
    let node = Node::start(dir.path(), &["--config", &file]);
    let _first = crate::support::Client::connect(&node.ws_url()).await;
    let refused = tokio_tungstenite::connect_async(node.ws_url())
        .await
        .unwrap_err();
    assert!(matches!(refused, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 429));
}

#[test]
fn unknown_keys_and_bad_values_fail_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "max_conections_per_ip = 3\n",
            "unknown key `max_conections_per_ip`",
        ),
        ("[limits]\nmax = 3\n", "unknown key `limits`"),
        ("print_config = true\n", "unknown key `print_config`"),
        ("max_connections = \"many\"\n", "key `max_connections`"),
        ("listen = [\"127.0.0.1:1\"]\n", "key `listen`"),
        ("max_connections = \n", "TOML parse error"),
    ];
    for (i, (text, expected)) in cases.into_iter().enumerate() {
        let file = write(dir.path(), &format!("bad{i}.toml"), text);
        let stderr = config_error(&edge(&["--config", &file], &[]));
        assert!(stderr.contains(expected), "{text}: {stderr}");
        assert!(stderr.contains(&file), "{stderr}");
    }
    // Values from the file are validated like flags.
    let file = write(
        dir.path(),
        "invalid.toml",
        "trusted_proxies = [\"10.0.0.0/33\"]\n",
    );
    let stderr = config_error(&edge(&["--config", &file], &[]));
    assert!(stderr.contains("--trusted-proxy"), "{stderr}");
    let stderr = config_error(&edge(
        &[
            "--config",
            &dir.path().join("missing.toml").display().to_string(),
        ],
        &[],
    ));
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

#[test]
fn print_config_shows_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = [
        "file-cluster-secret-0123456789",
        "file-session-secret-0123456789",
        "file-turn-secret",
        "redis-password-in-url",
        "env-join-token-secret-of-at-least-32-bytes",
    ];
    let file = write(
        dir.path(),
        "edge.toml",
        &format!(
            r#"
coordinator = ["http://127.0.0.1:7100"]
cluster_secret = "{}"
session_secret = "{}"
turn_secret = "{}"
turn_urls = ["turn:turn.example.org:3478"]
redis = "redis://app:{}@127.0.0.1:6379/"
"#,
            secrets[0], secrets[1], secrets[2], secrets[3]
        ),
    );
    let out = edge(
        &["--config", &file, "--print-config"],
        &[("HELIOGRAPH_JOIN_TOKEN_SECRET", secrets[4])],
    );
    let printed = stdout(&out);
    for s in secrets {
        assert!(!printed.contains(s), "{s} printed:\n{printed}");
    }
    for line in [
        r#"cluster_secret = "<redacted>"  # file"#,
        r#"session_secret = "<redacted>"  # file"#,
        r#"turn_secret = "<redacted>"  # file"#,
        r#"join_token_secret = "<redacted>"  # env"#,
        r#"redis = "redis://app:<redacted>@127.0.0.1:6379/"  # file"#,
        r#"coordinator = ["http://127.0.0.1:7100"]  # file"#,
    ] {
        assert!(printed.lines().any(|l| l == line), "{line}\n{printed}");
    }
}

#[test]
fn socketio_settings_come_from_flags_env_or_file_and_bad_event_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let events = write(
        dir.path(),
        "events.toml",
        "[events]\njoin_room = \"join\"\n",
    );
    let file = write(
        dir.path(),
        "edge.toml",
        &format!("socketio = true\nsocketio_events = \"{events}\"\n"),
    );
    let shown = stdout(&edge(&["--config", &file, "--print-config"], &[]));
    assert!(shown.contains("socketio = true"), "{shown}");
    assert!(shown.contains("socketio_events"), "{shown}");
    let shown = stdout(&edge(
        &["--print-config"],
        &[("HELIOGRAPH_SOCKETIO", "true")],
    ));
    assert!(shown.contains("socketio = true"), "{shown}");

    let bad = write(
        dir.path(),
        "bad.toml",
        "[events]\nleave_room = \"disconnect\"\n",
    );
    let line = config_error(&edge(&["--socketio", "--socketio-events", &bad], &[]));
    assert!(
        line.contains("--socketio-events") && line.contains("disconnect"),
        "{line}"
    );
    let line = config_error(&edge(&["--socketio-events", &events], &[]));
    assert!(line.contains("needs --socketio"), "{line}");
}
