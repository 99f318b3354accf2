//! Tests of the Sentinel URL, the reading of `SENTINEL MASTER` answers, and the broker
//! kinds a `sentinel://` URL makes.

use super::*;

fn part(host: &str, port: u16, db: i64) -> Part {
    Part {
        host: host.into(),
        port,
        db,
        username: None,
        password: None,
    }
}

#[test]
fn parts_parse_as_kombu_reads_them() {
    assert_eq!(
        parse_part("sentinel://h").unwrap(),
        part("h", DEFAULT_PORT, 0)
    );
    assert_eq!(
        parse_part("sentinel://h:26380/").unwrap(),
        part("h", 26380, 0)
    );
    assert_eq!(parse_part("sentinel://h:1/3").unwrap(), part("h", 1, 3));
    assert_eq!(
        parse_part("sentinel://h/3?x=1").unwrap(),
        part("h", DEFAULT_PORT, 3)
    );
    assert_eq!(
        parse_part("sentinel://[::1]:7/2").unwrap(),
        part("::1", 7, 2)
    );
    let p = parse_part("sentinel://u:p%40ss@h:1/0").unwrap();
    assert_eq!(
        (p.username.as_deref(), p.password.as_deref()),
        (Some("u"), Some("p@ss"))
    );
    let p = parse_part("sentinel://:secret@h").unwrap();
    assert_eq!((p.username, p.password.as_deref()), (None, Some("secret")));
    for bad in [
        "redis://h",
        "sentinel://",
        "sentinel://h:x",
        "sentinel://h/x",
        "sentinel://%zz@h",
    ] {
        assert!(parse_part(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_first_part_gives_db_and_password_and_a_master_name_is_required() {
    let s = Sentinel::open(
        "sentinel://:pw@a:1/4;sentinel://:other@b/5;",
        Some("mymaster"),
    )
    .unwrap();
    assert_eq!(s.sentinels, [("a".into(), 1), ("b".into(), DEFAULT_PORT)]);
    assert_eq!((s.db(), s.redis.password.as_deref()), (4, Some("pw")));
    assert!(matches!(
        Sentinel::open("sentinel://a", None),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        Sentinel::open(";", Some("m")),
        Err(Error::Config(_))
    ));
}

#[test]
fn a_master_flagged_down_is_skipped() {
    let info = |flags: &str| {
        HashMap::from([
            ("ip".to_owned(), "10.0.0.1".to_owned()),
            ("port".to_owned(), "6380".to_owned()),
            ("flags".to_owned(), flags.to_owned()),
        ])
    };
    assert_eq!(
        usable_master(&info("master")),
        Ok(("10.0.0.1".into(), 6380))
    );
    assert!(usable_master(&info("master,disconnected")).is_ok());
    for down in [
        "s_down,master",
        "master,o_down",
        "s_down,master,o_down",
        "slave",
        "",
    ] {
        assert!(usable_master(&info(down)).is_err(), "{down}");
    }
}

#[test]
fn a_sentinel_url_is_a_redis_broker_and_a_result_backend() {
    use super::super::transport::BrokerKind;
    let url = "sentinel://a:1;sentinel://b:2/0";
    assert!(matches!(BrokerKind::of(url, None), Ok(BrokerKind::Redis)));
    assert!(matches!(
        BrokerKind::of(url, Some(url)),
        Ok(BrokerKind::Redis)
    ));
    assert!(BrokerKind::of(url, Some("redis://c")).is_err());
    #[cfg(feature = "amqp")]
    assert!(matches!(
        BrokerKind::of("amqp://h//", Some(url)),
        Ok(BrokerKind::Amqp { backend }) if backend == url
    ));
}
