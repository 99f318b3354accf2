use super::*;

#[test]
fn urls() {
    let tcp = |u: &str| match Target::parse_url(u).unwrap() {
        Target::Tcp(a) => a,
        Target::Unix(_) => unreachable!(),
    };
    assert_eq!(tcp("http://127.0.0.1:8080"), "127.0.0.1:8080");
    assert_eq!(tcp("http://localhost:9/"), "localhost:9");
    assert_eq!(tcp("127.0.0.1:7"), "127.0.0.1:7");
    assert_eq!(tcp("http://example.com"), "example.com:80");
    assert_eq!(tcp("http://[::1]:5000"), "[::1]:5000");
    for bad in [
        "https://h:1",
        "http://h:1/v1",
        "http://u:p@h:1",
        "",
        "http://h:1?x=1",
    ] {
        assert!(
            Target::parse_url(bad).unwrap_err().is_invalid_input(),
            "{bad}"
        );
    }
}

#[test]
fn segments() {
    assert_eq!(encode_segment("add"), "add");
    assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    assert_eq!(encode_segment("é"), "%C3%A9");
}
