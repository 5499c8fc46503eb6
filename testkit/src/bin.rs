//! The workspace's binaries. Cargo tells integration tests only about their own package's
//! binaries, so every binary is looked up in the profile directory: next to the running
//! executable, or one level up for test executables (`target/<profile>/deps/`).

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

pub const EDGE: &str = "heliograph-edge";
pub const COORDINATOR: &str = "heliograph-coordinator";
pub const LOADTEST: &str = "heliograph-loadtest";

/// `target/<profile>/NAME`, if it has been built.
pub fn path(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", exe.display()))?;
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} is missing next to {}: build the workspace first (cargo build --workspace)",
        exe.display()
    )
}
