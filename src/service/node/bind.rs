//! Binding a node's listener: a Unix socket (its directory, its file, and removing it
//! only while it is still ours) or a TCP address.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::{ErrorKind, ServiceError};
use crate::service::socket;

pub(super) enum Bound {
    Unix(UnixBound),
    Tcp(tokio::net::TcpListener),
}

pub(super) struct UnixBound {
    pub(super) path: PathBuf,
    pub(super) listener: tokio::net::UnixListener,
    pub(super) guard: SocketGuard,
}

/// Removes the socket file at shutdown, if it is still the one this node bound.
pub(super) struct SocketGuard {
    pub(super) path: PathBuf,
    pub(super) dev: u64,
    pub(super) ino: u64,
}

impl SocketGuard {
    pub(super) fn remove(&self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.dev() == self.dev && m.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds a Unix socket at `path`: creates missing directories (0700), refuses a directory
/// that is not safe (`socket.rs`'s rules), replaces a stale socket, refuses a live one, and makes the socket 0600 before it appears at `path`
/// (bound under a temporary name, then renamed).
pub(super) fn bind_unix(path: &Path) -> Result<UnixBound, ServiceError> {
    let display = path.display();
    let dir = socket::dir_of(path);
    if path.file_name().is_none() {
        return Err(ServiceError::new(
            ErrorKind::Config,
            format!("the socket path {display} has no file name"),
        ));
    }
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(socket::DEFAULT_DIR_MODE)
            .create(&dir)
            .map_err(|e| ServiceError::io(format!("cannot create {}", dir.display()), e))?;
    }
    // Judged after creating it: someone else may have made it first.
    socket::check_dir(&dir)
        .map_err(|e| ServiceError::new(ErrorKind::UnsafeSocketDir, e.to_string()))?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(ServiceError::new(
                    ErrorKind::InUse,
                    format!("another node is already listening on {display}; stop it first, or pick another socket (--socket / WEFT_SOCKET)"),
                ))
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) => {
                std::fs::remove_file(path).map_err(|e| {
                    ServiceError::io(format!("cannot remove the stale socket {display}"), e)
                })?;
            }
            Err(e) => {
                return Err(ServiceError::io(
                    format!("cannot tell whether the socket {display} is in use"),
                    e,
                ))
            }
        },
        Ok(_) => {
            return Err(ServiceError::new(
                ErrorKind::Config,
                format!("{display} exists and is not a socket; refusing to replace it"),
            ))
        }
        Err(_) => {}
    }
    let tmp = dir.join(format!(".w{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = std::os::unix::net::UnixListener::bind(&tmp)
        .map_err(|e| ServiceError::io(format!("cannot bind {}", tmp.display()), e))?;
    let setup = || -> io::Result<std::fs::Metadata> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        std::fs::symlink_metadata(path)
    };
    let meta = setup().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ServiceError::io(format!("cannot set up the socket {display}"), e)
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ServiceError::io("cannot set up the listener", e))?;
    let listener = tokio::net::UnixListener::from_std(listener)
        .map_err(|e| ServiceError::io("cannot set up the listener", e))?;
    Ok(UnixBound {
        path: path.to_path_buf(),
        listener,
        guard: SocketGuard {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    })
}
