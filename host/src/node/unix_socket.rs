//! Unix sockets at any path. A socket's address holds at most 107 bytes of
//! path (`sun_path`), and a data directory nested deep enough (a CI
//! workspace, a tenant's directory on a mounted volume) puts its sockets past
//! that: `bind` and `connect` then fail with "path must be shorter than
//! SUN_LEN", and the directory's owner could serve no other process.
//!
//! A longer path is reached through the socket's directory opened as a file
//! and named by `/proc/self/fd/<n>/<file>`: the kernel resolves that name
//! through the open directory, so the socket lands at its real path, which
//! other processes reach the same way. Short paths are used as they are.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The longest path a socket address holds directly (`sun_path` less its
/// terminating NUL).
const MAX_DIRECT: usize = 107;

/// Binds a listener at `path`, however long.
///
/// # Errors
/// As [`UnixListener::bind`], or opening the directory of a long path.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    through_dir(path, |p| UnixListener::bind(p))
}

/// Connects to the socket at `path`, however long.
///
/// # Errors
/// As [`UnixStream::connect`], or opening the directory of a long path.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    through_dir(path, |p| UnixStream::connect(p))
}

fn through_dir<T>(path: &Path, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    if path.as_os_str().len() <= MAX_DIRECT {
        return f(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return f(path);
    };
    // Held open until the call returns: the name below goes through it.
    let dir = std::fs::File::open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    f(&short)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn a_socket_deeper_than_sun_path_allows_is_bound_and_reached() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("owner.sock");
        assert!(path.as_os_str().len() > MAX_DIRECT);
        assert!(
            UnixListener::bind(&path).is_err(),
            "the plain call refuses it"
        );
        let listener = bind(&path).unwrap();
        assert!(path.exists(), "the socket is at its real path");
        let mut client = connect(&path).unwrap();
        client.write_all(b"ping").unwrap();
        let (mut served, _) = listener.accept().unwrap();
        let mut got = [0u8; 4];
        served.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
    }
}
