use super::*;

/// The binding keys are kombu's: level 27 `1.#` / `0.#`, level 26 `*.1.#`, the
/// delivery exchange `*.`×27 `0.#`.
#[test]
fn level_keys_are_kombus() {
    assert_eq!(level_key(27, '1'), "1.#");
    assert_eq!(level_key(27, '0'), "0.#");
    assert_eq!(level_key(26, '1'), "*.1.#");
    assert_eq!(level_key(0, '0'), format!("{}0.#", "*.".repeat(27)));
}

/// A delay's key has 28 digits, the binary of the delay; bit 27-L is level L's.
#[test]
fn routing_key_digits_are_the_delay_in_binary() {
    for d in [1u64, 2, 3, 60, 86_400, MAX_DELAY_SECS] {
        let key = delayed_routing_key(d, "q").unwrap();
        let digits: String = key.split('.').take(28).collect();
        assert_eq!(u64::from_str_radix(&digits, 2).unwrap(), d);
        assert!(key.ends_with(".q"));
    }
    let far = delayed_routing_key(MAX_DELAY_SECS + 10, "q").unwrap();
    assert_eq!(far, delayed_routing_key(MAX_DELAY_SECS, "q").unwrap());
}
