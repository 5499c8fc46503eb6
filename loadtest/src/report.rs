//! `report`: result files → a markdown table and SVG charts.

use std::path::{Path, PathBuf};

use anyhow::Result;

pub fn render(inputs: &[PathBuf], out_dir: &Path) -> Result<()> {
    let _ = (inputs, out_dir);
    anyhow::bail!("not yet")
}
