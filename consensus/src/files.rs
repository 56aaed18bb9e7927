//! Files only this node's user may read: data directories (0700), keys and logs (0600),
//! written through a fresh temporary name opened with `O_EXCL` (never a file or link an
//! attacker placed there beforehand), synced, then renamed into place.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and its parents) if needed and makes it 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Writes `contents` to `path` atomically with mode 0600.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", crate::ids::unique_suffix()));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    let written = f.write_all(contents).and_then(|_| f.sync_all()).and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Opens `path` for appending (a log), created with mode 0600.
pub fn append_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_and_dirs_are_the_owners_only() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("a/b");
        private_dir(&dir)?;
        assert_eq!(std::fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
        let key = dir.join("node.key");
        write_private(&key, b"secret")?;
        write_private(&key, b"secret2")?;
        assert_eq!(std::fs::read(&key)?, b"secret2");
        assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&dir)?.count(), 1, "no temporary file left behind");
        let log = dir.join("x.log");
        drop(append_private(&log)?);
        assert_eq!(std::fs::metadata(&log)?.permissions().mode() & 0o777, 0o600);
        Ok(())
    }
}
