//! `serve --config FILE`: flags over environment over file over defaults, required settings
//! from the file, unknown keys refused by name, `--print-config` without the cluster secret.
//! The real binary, its environment set per child (never the test's own).

use std::path::Path;
use std::process::{Command, Output};

use heliograph_testkit::process::{self, Proc};
use heliograph_testkit::wait::{DEADLINE, STARTUP};

const SECRET: &str = "file-cluster-secret-0123456789";

fn coordinator() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_heliograph-coordinator"));
    cmd.env_clear();
    cmd
}

fn write_config(dir: &Path, extra: &str) -> String {
    let path = dir.join("replica.toml");
    let text = format!(
        r#"
id = 3
raft_listen = "127.0.0.1:0"
api_listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
region = "file-region"
data_dir = "{}"
cluster_secret = "{SECRET}"
grace_ms = 1111
heartbeat_ms = 222
{extra}"#,
        dir.join("data").display()
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn run(cmd: Command) -> Output {
    process::run(cmd, DEADLINE).unwrap()
}

#[test]
fn config_file_is_under_env_which_is_under_flags_and_hides_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "");
    let mut cmd = coordinator();
    cmd.args([
        "serve",
        "--config",
        &file,
        "--print-config",
        "--grace-ms",
        "3333",
    ])
    .env("HELIOGRAPH_GRACE_MS", "2222")
    .env("HELIOGRAPH_REGION", "env-region")
    .env("HELIOGRAPH_SNAPSHOT_AFTER_ENTRIES", "44");
    let out = run(cmd);
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "grace_ms = 3333  # flag",
        r#"region = "env-region"  # env"#,
        "snapshot_after_entries = 44  # env",
        "heartbeat_ms = 222  # file",
        "id = 3  # file",
        r#"cluster_secret = "<redacted>"  # file"#,
    ] {
        assert!(printed.lines().any(|l| l == line), "{line}\n{printed}");
    }
    assert!(!printed.contains(SECRET), "{printed}");
    // A secret from a flag is redacted too.
    let mut cmd = coordinator();
    cmd.args(["serve", "--config", &file, "--print-config"])
        .args(["--cluster-secret", "flag-cluster-secret-0123456789"]);
    let printed = String::from_utf8(run(cmd).stdout).unwrap();
    assert!(!printed.contains("flag-cluster-secret"), "{printed}");
    assert!(
        printed.contains(r#"cluster_secret = "<redacted>"  # flag"#),
        "{printed}"
    );
}

#[test]
fn a_replica_runs_from_its_config_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "");
    let mut cmd = coordinator();
    cmd.args(["serve", "--config", &file]);
    let mut replica = Proc::spawn(cmd, "replica", Some(&dir.path().join("replica.log"))).unwrap();
    let line = replica.address_line(STARTUP).unwrap();
    assert_eq!(line["node_id"], 3, "{line}");
    assert!(dir.path().join("data").is_dir());
    replica.terminate(DEADLINE).unwrap();
}

#[test]
fn unknown_keys_fail_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, expected) in [
        ("grace = 5\n", "unknown key `grace`"),
        ("api = \"x\"\n", "unknown key `api`"),
        ("heartbeat_ms = \"fast\"\n", "key `heartbeat_ms`"),
    ] {
        let file = write_config(dir.path(), extra);
        let mut cmd = coordinator();
        cmd.args(["serve", "--config", &file]);
        let out = run(cmd);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}
