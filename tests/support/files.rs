//! Temp files of one test.

use super::*;

pub fn toml_path(p: &Path) -> String {
    p.display().to_string().replace('\\', "/")
}

/// A temp dir for one test's files.
pub fn test_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("georouter-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
