//! Whom a socket's directory lets in: the check the node makes before it binds and the
//! [`Client`](super::Client) makes before it connects, so that a directory another local
//! user prepared (say, `/tmp/weft-$UID` created first, mode 0777) never carries a request.
//!
//! # The rule
//!
//! A socket lives in a directory; whoever can write to that directory can replace the
//! socket with one of their own and answer in the node's place. So:
//!
//! 1. The **default** socket directory (`$XDG_RUNTIME_DIR`, else `/tmp/weft-$UID`; see
//!    [`default_socket_path`](super::default_socket_path)), however a socket path names
//!    it, must be a real directory (not a symbolic link), owned by the current user, with no permission for group or others
//!    (mode 0700, [`DEFAULT_DIR_MODE`]). The node creates it so when it is missing.
//! 2. **Any other** socket directory (`--socket`, `$WEFT_SOCKET`, [`Node::unix`]) must be
//!    owned by the current user or by root, and writable by neither group nor others
//!    ([`SHARED_WRITE_BITS`]); directories the node creates for it are mode 0700.
//!
//! A directory that breaks its rule is refused with a message that says which rule and
//! what to do; nothing is sent to, or bound in, it.
//!
//! [`Node::unix`]: super::Node::unix

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The mode the node gives the directories it creates, and the only mode the default
/// socket directory may have (rule 1).
pub(crate) const DEFAULT_DIR_MODE: u32 = 0o700;
/// Permission bits no socket directory may have (rule 2): write for group or others.
pub(crate) const SHARED_WRITE_BITS: u32 = 0o022;
/// Permission bits the default socket directory may not have (rule 1): any for group or
/// others.
pub(crate) const GROUP_OTHER_BITS: u32 = 0o077;

const _: () = assert!(DEFAULT_DIR_MODE & GROUP_OTHER_BITS == 0);
const _: () = assert!(SHARED_WRITE_BITS & !GROUP_OTHER_BITS == 0);

/// The default socket directory: `$XDG_RUNTIME_DIR`, else `/tmp/weft-$UID` (whatever
/// `$WEFT_SOCKET` says: that is a choice of the user's, judged by rule 2).
pub(crate) fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(format!("/tmp/weft-{}", current_uid())),
    }
}

/// The real user id, without libc: the owner of `/proc/self` (Linux), else of `$HOME`.
pub(crate) fn current_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .or_else(|_| std::fs::metadata(std::env::var_os("HOME").unwrap_or_default()))
        .map_or(0, |m| m.uid())
}

/// The directory a socket at `path` lives in (`.` for a bare file name).
pub(crate) fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What is wrong with a socket directory.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    /// Rule 1: the default directory is a symbolic link.
    Symlink,
    /// It is not a directory.
    NotADir,
    /// Owned by `owner`, not by the current user `me` (nor, under rule 2, root).
    Owner { owner: u32, me: u32 },
    /// Its mode has bits for group or others that its rule forbids.
    Mode { mode: u32, strict: bool },
}

/// What the checks know of a directory: its `lstat`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DirFacts {
    pub is_symlink: bool,
    pub is_dir: bool,
    pub owner: u32,
    pub mode: u32,
}

/// Judges a directory by rule 1 (`strict`: the default directory) or rule 2.
pub(crate) fn judge(facts: DirFacts, me: u32, strict: bool) -> Result<(), Problem> {
    if facts.is_symlink && strict {
        return Err(Problem::Symlink);
    }
    if !facts.is_dir {
        return Err(Problem::NotADir);
    }
    let owner_ok = facts.owner == me || (!strict && facts.owner == 0);
    if !owner_ok {
        return Err(Problem::Owner {
            owner: facts.owner,
            me,
        });
    }
    let forbidden = if strict {
        GROUP_OTHER_BITS
    } else {
        SHARED_WRITE_BITS
    };
    if facts.mode & forbidden != 0 {
        return Err(Problem::Mode {
            mode: facts.mode & 0o7777,
            strict,
        });
    }
    Ok(())
}

/// Why a socket directory was refused, for messages.
#[derive(Debug)]
pub(crate) struct Unsafe {
    dir: PathBuf,
    problem: Problem,
}

impl fmt::Display for Unsafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self.dir.display();
        write!(f, "refusing the socket directory {dir}: ")?;
        match &self.problem {
            Problem::Symlink => write!(f, "it is a symbolic link, and the default socket directory must be a directory of your own"),
            Problem::NotADir => write!(f, "it is not a directory"),
            Problem::Owner { owner, me } => write!(
                f,
                "it is owned by uid {owner}, not by you (uid {me}); another user may have created it to intercept requests"
            ),
            Problem::Mode { mode, strict: true } => write!(
                f,
                "its mode is {mode:04o}, and the default socket directory must be 0700 (no access for group or others)"
            ),
            Problem::Mode { mode, strict: false } => write!(
                f,
                "its mode is {mode:04o}: group or others may write to it, and so replace the socket"
            ),
        }?;
        write!(
            f,
            " (remove or fix it, or choose another socket with --socket / WEFT_SOCKET)"
        )
    }
}

/// Checks the directory `dir` of a socket by its rule (rule 1 if it is
/// [`default_dir`]). A missing directory is not judged here (`Ok`): the node creates it,
/// and a client finds no socket in it.
pub(crate) fn check_dir(dir: &Path) -> Result<(), Unsafe> {
    let strict = dir == default_dir();
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    let is_symlink = meta.file_type().is_symlink();
    // Rule 2 follows a link to the directory it names.
    let meta = if is_symlink && !strict {
        match std::fs::metadata(dir) {
            Ok(m) => m,
            Err(_) => return Ok(()),
        }
    } else {
        meta
    };
    let facts = DirFacts {
        is_symlink,
        is_dir: meta.is_dir(),
        owner: meta.uid(),
        mode: meta.mode(),
    };
    judge(facts, current_uid(), strict).map_err(|problem| Unsafe {
        dir: dir.to_path_buf(),
        problem,
    })
}

#[cfg(test)]
mod tests;
