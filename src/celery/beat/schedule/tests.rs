use super::*;

fn at(s: &str) -> u64 {
    u64::try_from(DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()).unwrap()
}

fn cron(p: &str, tz: &str) -> Crontab {
    match Schedule::crontab_in(p, tz).unwrap() {
        Schedule::Crontab(c) => c,
        Schedule::Interval(_) => unreachable!(),
    }
}

#[test]
fn bad_patterns_and_zones_are_refused_with_the_reason() {
    for bad in [
        "",
        "* * *",
        "61 * * * *",
        "* 25 * * *",
        "* * * * funday",
        "0 0 31 2 *",
    ] {
        let e = Schedule::crontab(bad).unwrap_err().to_string();
        assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
    }
    let e = Schedule::crontab_in("* * * * *", "Mars/Olympus").unwrap_err();
    assert!(
        e.to_string().contains("unknown time zone \"Mars/Olympus\""),
        "{e}"
    );
}

#[test]
fn next_and_last_times_in_a_zone() {
    // 07:00 on weekdays in Paris (UTC+1 in January).
    let c = cron("0 7 * * mon-fri", "Europe/Paris");
    // Friday 2026-01-09 10:00 UTC → Monday 2026-01-12 07:00 Paris = 06:00 UTC.
    assert_eq!(
        c.next_after(at("2026-01-09T10:00:00Z")),
        Some(at("2026-01-12T06:00:00Z"))
    );
    assert_eq!(
        c.last_at_or_before(at("2026-01-12T06:00:00Z")),
        Some(at("2026-01-12T06:00:00Z"))
    );
    assert_eq!(
        c.last_at_or_before(at("2026-01-11T23:00:00Z")),
        Some(at("2026-01-09T06:00:00Z"))
    );
    // Seconds as a sixth field, first.
    let c = cron("*/15 * * * * *", "UTC");
    assert_eq!(
        c.next_after(at("2026-01-01T00:00:01Z")),
        Some(at("2026-01-01T00:00:15Z"))
    );
}

#[test]
fn day_of_month_and_day_of_week_must_both_match_as_in_celery() {
    // Celery's "second Tuesday of the month": crontab(0, 0, day_of_week="tue",
    // day_of_month="8-14").
    let c = cron("0 0 8-14 * tue", "UTC");
    assert_eq!(
        c.next_after(at("2026-12-01T00:00:00Z")),
        Some(at("2026-12-08T00:00:00Z"))
    );
    assert_eq!(
        c.next_after(at("2026-12-08T00:00:00Z")),
        Some(at("2027-01-12T00:00:00Z"))
    );
}

#[test]
fn daylight_saving_changes_run_once() {
    // Europe/Paris springs forward on 2026-03-29 at 02:00 (to 03:00): 02:30 does not
    // exist that day; it falls back on 2026-10-25 at 03:00 (to 02:00): 02:30 occurs
    // twice.
    let c = cron("30 2 * * *", "Europe/Paris");
    let spring = c.next_after(at("2026-03-28T12:00:00Z")).unwrap();
    assert!(spring > at("2026-03-29T00:00:00Z") && spring <= at("2026-03-30T00:30:00Z"));
    let first = c.next_after(at("2026-10-24T12:00:00Z")).unwrap();
    assert_eq!(first, at("2026-10-25T00:30:00Z"), "the first 02:30 (UTC+2)");
    let next = c.next_after(first).unwrap();
    assert_eq!(
        next,
        at("2026-10-26T01:30:00Z"),
        "not the second 02:30 the same night"
    );
}
