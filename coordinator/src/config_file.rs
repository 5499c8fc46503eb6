//! Configuration files for both binaries (`heliograph-edge`, `heliograph-coordinator serve`):
//! a TOML file whose keys are the flags' names in snake_case (`max_connections_per_ip = 50`,
//! `trusted_proxies = ["10.0.0.0/8"]`), read with figment. Flags win over environment
//! variables, which win over the file, which wins over the defaults.
//!
//! The file is merged into clap's own parse: a key that is neither on the command line nor
//! in the environment becomes that flag, so every flag is a key with the same parsing and
//! validation, and a key that names no flag is an error. [`render`] prints the effective
//! configuration with secrets redacted: flags that hide their environment value
//! (`hide_env_values`), and passwords in URLs.
//!
//! Imports nothing of the crate.

use std::any::TypeId;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use figment::Figment;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Value};

/// The flag naming the file (`--config`); never a key of the file itself.
pub const CONFIG_ID: &str = "config";
/// `--print-config`; never a key of the file.
pub const PRINT_ID: &str = "print_config";
/// What secrets are replaced with.
pub const REDACTED: &str = "<redacted>";

/// Why the configuration could not be read; each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// clap's own error (including `--help` and `--version`, which are not failures).
    #[error("{}", clap_line(.0))]
    Args(#[from] clap::Error),
    #[error("config file {path}: {message}")]
    Read { path: String, message: String },
    #[error("config file {path}: unknown key `{key}`")]
    UnknownKey { path: String, key: String },
    #[error("config file {path}: key `{key}`: {message}")]
    BadValue {
        path: String,
        key: String,
        message: String,
    },
}

impl FileError {
    /// `--help` or `--version`: print it and exit 0.
    pub fn is_info(&self) -> bool {
        matches!(self, FileError::Args(e) if !e.use_stderr())
    }
}

/// The merged arguments, and which of them came from the file.
#[derive(Debug)]
pub struct Parsed {
    pub matches: ArgMatches,
    pub from_file: BTreeSet<String>,
}

/// Parses `argv` (program name first) with `command`, taking each argument that is neither on
/// the command line nor in the environment from the file named by `--config`. `subcommand`:
/// the subcommand whose arguments the file holds (`None`: the top level). Other subcommands
/// parse as they always did.
pub fn parse(
    command: Command,
    argv: Vec<OsString>,
    subcommand: Option<&str>,
) -> Result<Parsed, FileError> {
    // First pass: flags and environment only, required arguments optional (the file may hold
    // them).
    let relaxed = match subcommand {
        Some(name) => command
            .clone()
            .mut_subcommand(name, |c| c.mut_args(|a| a.required(false))),
        None => command.clone().mut_args(|a| a.required(false)),
    };
    let first = relaxed.try_get_matches_from(argv.iter())?;
    let (scope, cmd) = match subcommand {
        None => (Some(&first), Some(&command)),
        Some(name) => (
            first.subcommand_matches(name),
            command.find_subcommand(name),
        ),
    };
    let (Some(scope), Some(cmd)) = (scope, cmd) else {
        return Ok(Parsed {
            matches: command.try_get_matches_from(argv)?,
            from_file: BTreeSet::new(),
        });
    };
    let path = match scope.try_get_one::<PathBuf>(CONFIG_ID) {
        Ok(Some(p)) => p.clone(),
        _ => {
            return Ok(Parsed {
                matches: command.try_get_matches_from(argv)?,
                from_file: BTreeSet::new(),
            });
        }
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| FileError::Read {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let dict: Dict = Figment::from(Toml::string(&text))
        .extract()
        .map_err(|e| FileError::Read {
            path: shown.clone(),
            message: one_line(&e.kind.to_string()),
        })?;
    let mut extra = Vec::new();
    let mut from_file = BTreeSet::new();
    for (key, value) in &dict {
        let arg = file_arg(cmd, key).ok_or_else(|| FileError::UnknownKey {
            path: shown.clone(),
            key: key.clone(),
        })?;
        let bad = |message: String| FileError::BadValue {
            path: shown.clone(),
            key: key.clone(),
            message,
        };
        if matches!(
            scope.value_source(key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let args = file_value_args(arg, value).map_err(|m| bad(m.to_owned()))?;
        check_value(arg, &args).map_err(bad)?;
        if !args.is_empty() {
            from_file.insert(key.clone());
        }
        extra.extend(args);
    }
    let matches = command.try_get_matches_from(argv.into_iter().chain(extra))?;
    Ok(Parsed { matches, from_file })
}

/// The argument a file key names: any flag but `--config`, `--print-config`, help and
/// version.
fn file_arg<'a>(cmd: &'a Command, key: &str) -> Option<&'a Arg> {
    if [CONFIG_ID, PRINT_ID].contains(&key) {
        return None;
    }
    cmd.get_arguments()
        .find(|a| a.get_id() == key && a.get_long().is_some() && is_setting(a))
}

/// A flag that carries a setting (not help or version).
fn is_setting(arg: &Arg) -> bool {
    !matches!(
        arg.get_action(),
        ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
    )
}

/// The command-line form of one file value (`--name=value`, repeated for arrays).
fn file_value_args(arg: &Arg, value: &Value) -> Result<Vec<OsString>, &'static str> {
    let long = arg.get_long().unwrap_or_default();
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return match value {
            Value::Bool(_, true) => Ok(vec![format!("--{long}").into()]),
            Value::Bool(_, false) => Ok(Vec::new()),
            _ => Err("must be true or false"),
        };
    }
    let values = match value {
        Value::Array(_, items) if matches!(arg.get_action(), ArgAction::Append) => items
            .iter()
            .map(scalar)
            .collect::<Option<Vec<_>>>()
            .ok_or("must be an array of strings or numbers")?,
        Value::Array(..) => return Err("takes one value, not an array"),
        v => vec![scalar(v).ok_or("must be a string, a number or a boolean")?],
    };
    Ok(values
        .into_iter()
        .map(|v| format!("--{long}={v}").into())
        .collect())
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(_, s) => Some(s.clone()),
        Value::Char(_, c) => Some(c.to_string()),
        Value::Bool(_, b) => Some(b.to_string()),
        Value::Num(..) => value
            .to_i128()
            .map(|n| n.to_string())
            .or_else(|| value.to_f64().map(|f| f.to_string())),
        Value::Empty(..) | Value::Dict(..) | Value::Array(..) => None,
    }
}

/// Parses one key's values with its flag alone, so that a bad value is reported by key.
fn check_value(arg: &Arg, args: &[OsString]) -> Result<(), String> {
    let alone = Command::new("file")
        .no_binary_name(true)
        .disable_help_flag(true)
        .arg(arg.clone().required(false).env(None::<&str>));
    alone
        .try_get_matches_from(args)
        .map(|_| ())
        .map_err(|e| clap_line(&e))
}

/// A clap error's first line, without its `error: ` prefix.
fn clap_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default().trim();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// A multi-line message (a TOML syntax error with its source excerpt) as one line: its first
/// and last lines.
fn one_line(s: &str) -> String {
    let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    match lines.next_back() {
        Some(last) if last != first => format!("{first}: {last}"),
        _ => first.to_owned(),
    }
}

/// The effective configuration of `cmd` (the command or subcommand the file is for) as TOML,
/// each key with where its value came from; unset keys as comments, secrets redacted. It can
/// be read back as a `--config` file once the redacted values are put back.
pub fn render(program: &str, cmd: &Command, parsed: &Parsed, matches: &ArgMatches) -> String {
    let mut out = format!(
        "# {program}: effective configuration (flags > environment > file > defaults); \
         secrets are redacted\n"
    );
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if !is_setting(arg) || [CONFIG_ID, PRINT_ID].contains(&id) || arg.get_long().is_none() {
            continue;
        }
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            _ if raw.is_empty() => None,
            Some(ValueSource::CommandLine) if parsed.from_file.contains(id) => Some("file"),
            Some(ValueSource::CommandLine) => Some("flag"),
            Some(ValueSource::EnvVariable) => Some("env"),
            Some(ValueSource::DefaultValue) => Some("default"),
            _ => None,
        };
        let Some(source) = source else {
            let _ = writeln!(out, "# {id} is not set");
            continue;
        };
        let secret = arg.is_hide_env_values_set();
        let literal = |v: &str| -> String {
            if secret {
                quoted(REDACTED)
            } else if (is_bool(arg) && (v == "true" || v == "false")) || is_integer(arg) {
                v.to_owned()
            } else {
                quoted(&redact_url_password(v))
            }
        };
        let value = if matches!(arg.get_action(), ArgAction::Append) {
            let items: Vec<String> = raw.iter().map(|v| literal(v)).collect();
            format!("[{}]", items.join(", "))
        } else {
            literal(raw.last().map_or("", String::as_str))
        };
        let _ = writeln!(out, "{id} = {value}  # {source}");
    }
    out
}

fn is_bool(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

fn is_integer(arg: &Arg) -> bool {
    let t = arg.get_value_parser().type_id();
    [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
    ]
    .iter()
    .any(|id| t == *id)
}

/// A TOML basic string (JSON's escapes are a subset of TOML's).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// `redis://user:secret@host/` → `redis://user:<redacted>@host/`; a user part without a
/// colon may be a bare password and is redacted whole.
pub fn redact_url_password(value: &str) -> String {
    let Some(scheme_end) = value.find("://") else {
        return value.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &value[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_len].rfind('@') else {
        return value.to_owned();
    };
    let userinfo = &rest[..at];
    let kept = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None => REDACTED.to_owned(),
    };
    format!("{}{kept}{}", &value[..authority_start], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url_password("redis://:hunter2@10.0.0.7:6379/0"),
            "redis://:<redacted>@10.0.0.7:6379/0"
        );
        assert_eq!(
            redact_url_password("rediss://app:hunter2@r.example/?x=a@b"),
            "rediss://app:<redacted>@r.example/?x=a@b"
        );
        assert_eq!(
            redact_url_password("redis://hunter2@r.example"),
            "redis://<redacted>@r.example"
        );
        assert_eq!(
            redact_url_password("redis://10.0.0.7:6379/"),
            "redis://10.0.0.7:6379/"
        );
        assert_eq!(redact_url_password("a@b"), "a@b");
    }

    #[test]
    fn one_line_keeps_the_first_and_last_lines() {
        assert_eq!(
            one_line("TOML parse error at line 1\n  |\n1 | a =\n  |    ^\nexpected a value\n"),
            "TOML parse error at line 1: expected a value"
        );
        assert_eq!(one_line("just this"), "just this");
    }
}
