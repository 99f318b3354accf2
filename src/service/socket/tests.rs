use super::*;

fn dir(owner: u32, mode: u32) -> DirFacts {
    DirFacts {
        is_symlink: false,
        is_dir: true,
        owner,
        mode: 0o040000 | mode,
    }
}

#[test]
fn the_default_directory_is_the_users_own_and_0700() {
    assert_eq!(judge(dir(1000, DEFAULT_DIR_MODE), 1000, true), Ok(()));
    assert_eq!(
        judge(dir(1000, 0o750), 1000, true),
        Err(Problem::Mode {
            mode: 0o750,
            strict: true
        })
    );
    assert!(judge(dir(1000, 0o777), 1000, true).is_err());
    assert_eq!(
        judge(dir(0, 0o700), 1000, true),
        Err(Problem::Owner { owner: 0, me: 1000 })
    );
    assert_eq!(
        judge(dir(65534, 0o700), 0, true),
        Err(Problem::Owner {
            owner: 65534,
            me: 0
        })
    );
    let link = DirFacts {
        is_symlink: true,
        ..dir(1000, 0o700)
    };
    assert_eq!(judge(link, 1000, true), Err(Problem::Symlink));
}

#[test]
fn other_directories_are_the_users_or_roots_and_not_shared_for_writing() {
    assert_eq!(judge(dir(1000, 0o755), 1000, false), Ok(()));
    assert_eq!(judge(dir(0, 0o755), 1000, false), Ok(()));
    assert_eq!(
        judge(dir(1000, 0o775), 1000, false),
        Err(Problem::Mode {
            mode: 0o775,
            strict: false
        })
    );
    // /tmp itself: root's, but anyone may write to it.
    assert!(judge(dir(0, 0o1777), 1000, false).is_err());
    assert_eq!(
        judge(dir(65534, 0o700), 1000, false),
        Err(Problem::Owner {
            owner: 65534,
            me: 1000
        })
    );
    let file = DirFacts {
        is_dir: false,
        ..dir(1000, 0o600)
    };
    assert_eq!(judge(file, 1000, false), Err(Problem::NotADir));
}

#[test]
fn messages_say_what_to_do() {
    let e = Unsafe {
        dir: PathBuf::from("/tmp/weft-1000"),
        problem: Problem::Owner {
            owner: 65534,
            me: 1000,
        },
    };
    let m = e.to_string();
    assert!(
        m.contains("/tmp/weft-1000") && m.contains("uid 65534"),
        "{m}"
    );
    assert!(m.contains("WEFT_SOCKET"), "{m}");
}
