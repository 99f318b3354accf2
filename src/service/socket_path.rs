//! Where the node listens by default, and where the client looks for it.

use std::ffi::OsString;
use std::path::PathBuf;

/// The environment variable that names the node's socket.
const SOCKET_ENV: &str = "WEFT_SOCKET";
/// The per-user runtime directory (XDG base directory specification).
const RUNTIME_DIR_ENV: &str = "XDG_RUNTIME_DIR";
/// The socket's file name inside the runtime directory.
const SOCKET_NAME: &str = "weft.sock";

/// The default socket path, on which the node and the `weft` CLI agree:
/// `$WEFT_SOCKET` if set, else `$XDG_RUNTIME_DIR/weft.sock` if `XDG_RUNTIME_DIR` is set,
/// else `/tmp/weft-$UID/weft.sock`.
///
/// Empty variables count as unset.
///
/// ```
/// let path = weft::service::default_socket_path();
/// assert!(path.is_absolute() || std::env::var_os("WEFT_SOCKET").is_some());
/// ```
pub fn default_socket_path() -> PathBuf {
    resolve(
        std::env::var_os(SOCKET_ENV),
        std::env::var_os(RUNTIME_DIR_ENV),
        current_uid(),
    )
}

/// [`default_socket_path`] as a pure function of its inputs.
fn resolve(socket: Option<OsString>, runtime_dir: Option<OsString>, uid: u32) -> PathBuf {
    if let Some(socket) = socket.filter(|s| !s.is_empty()) {
        return PathBuf::from(socket);
    }
    if let Some(dir) = runtime_dir.filter(|s| !s.is_empty()) {
        return PathBuf::from(dir).join(SOCKET_NAME);
    }
    PathBuf::from(format!("/tmp/weft-{uid}")).join(SOCKET_NAME)
}

/// The real user id of this process, without `libc`: the owner of `/proc/self` (Linux),
/// else the owner of `$HOME`, else `$UID` if a shell exported it.
fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return meta.uid();
    }
    if let Some(meta) = std::env::var_os("HOME").and_then(|h| std::fs::metadata(h).ok()) {
        return meta.uid();
    }
    std::env::var("UID")
        .ok()
        .and_then(|u| u.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn socket_env_wins() {
        assert_eq!(
            resolve(os("/x/y.sock"), os("/run/user/7"), 7),
            PathBuf::from("/x/y.sock")
        );
    }

    #[test]
    fn runtime_dir_next() {
        assert_eq!(
            resolve(None, os("/run/user/7"), 7),
            PathBuf::from("/run/user/7/weft.sock")
        );
        assert_eq!(
            resolve(os(""), os("/run/user/7"), 7),
            PathBuf::from("/run/user/7/weft.sock")
        );
    }

    #[test]
    fn tmp_per_uid_last() {
        assert_eq!(
            resolve(None, None, 1000),
            PathBuf::from("/tmp/weft-1000/weft.sock")
        );
        assert_eq!(
            resolve(None, os(""), 0),
            PathBuf::from("/tmp/weft-0/weft.sock")
        );
    }

    #[test]
    fn uid_is_ours() {
        use std::os::unix::fs::MetadataExt;
        // A file we create is owned by our effective uid, which is the real one here.
        let dir = std::env::temp_dir().join(format!("weft-uid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let owner = std::fs::metadata(&dir).unwrap().uid();
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(current_uid(), owner);
    }
}
