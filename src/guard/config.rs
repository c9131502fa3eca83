//! The `[rules]` section of the configuration file.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units::HumanDuration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// The folder of rule files (`*.toml`, read in name order), relative
    /// to the config file. Without it only bot traps are enforced.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// How often the folder is checked for changed files.
    #[serde(default = "default_poll")]
    pub poll_interval: HumanDuration,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: None,
            poll_interval: default_poll(),
        }
    }
}

impl crate::validate::Validate for RulesConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if let Some(dir) = &self.dir {
            if !dir.is_dir() {
                problems.push(format!("{at}.dir: {} is not a folder", dir.display()));
            }
        }
        if self.poll_interval.0 < Duration::from_millis(100) {
            problems.push(format!("{at}.poll_interval: must be at least 100ms"));
        }
    }
}

fn default_poll() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
