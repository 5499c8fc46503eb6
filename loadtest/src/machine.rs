//! What the load ran on: cores, kernel and CPU model, recorded in every result file.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub kernel: String,
    pub cpu_model: String,
}

impl Machine {
    /// Reads the machine description; unknown parts read as "unknown".
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cores_from_cpuinfo = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let cores = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(cores_from_cpuinfo.max(1));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Self {
            cores,
            kernel,
            cpu_model: cpu_model(&cpuinfo),
        }
    }
}

fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            matches!(key.trim(), "model name" | "Model" | "cpu model")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_model_name() {
        let info = "processor\t: 0\nvendor_id\t: X\nmodel name\t: Some CPU @ 3.0GHz\n";
        assert_eq!(cpu_model(info), "Some CPU @ 3.0GHz");
    }

    #[test]
    fn detects_this_machine() {
        let m = Machine::detect();
        assert!(m.cores >= 1);
        assert!(!m.kernel.is_empty());
    }
}
