use super::*;

#[test]
fn the_head_limit_is_the_documented_one() {
    // README and the `service` module docs say 32 KiB.
    assert_eq!(MAX_HEAD_BYTES, 32 * 1024);
}

#[test]
fn hypers_error_answers_become_json() {
    let out =
        rewrite_hyper_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n")
            .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("malformed"));
    assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
    for code in ["414 URI Too Long", "431 Request Header Fields Too Large"] {
        let head = format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\n\r\n");
        assert!(rewrite_hyper_error(head.as_bytes()).is_some(), "{code}");
    }
    // Our own answers, and anything with a body, pass untouched.
    for other in [
        &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}"[..],
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"{\"error\": \"x\"}",
    ] {
        assert!(rewrite_hyper_error(other).is_none());
    }
}
