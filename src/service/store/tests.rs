use super::*;

fn finished(store: &Store, outcome: FinalOutcome) -> Arc<Record> {
    assert!(store.reserve());
    let (r, _rx) = Record::new("t", State::Pending, None);
    store.insert(&r);
    store.finish(&r, outcome.into());
    r
}

#[test]
fn json_len_is_the_compact_json_length() {
    let v = serde_json::json!({"a": [1, "two", null], "b": "é\n"});
    assert_eq!(json_len(&v), serde_json::to_string(&v).unwrap().len());
}

#[test]
fn the_byte_budget_evicts_oldest_first_but_keeps_the_newest() {
    let big = "x".repeat(10_000);
    let weight = RECORD_OVERHEAD + big.len() + 2;
    let store = Store::new(Duration::from_secs(60), 100, 100, 3 * weight, None);
    let rs: Vec<_> = (0..5)
        .map(|_| finished(&store, FinalOutcome::Failure(big.clone())))
        .collect();
    assert!(store.get(&rs[0].id).is_none() && store.get(&rs[1].id).is_none());
    assert!(rs[2..].iter().all(|r| store.get(&r.id).is_some()));
    assert_eq!(store.finished_bytes(), 3 * weight);
    // One record over the whole budget: kept alone, readable by id.
    let huge = finished(
        &store,
        FinalOutcome::Success(Value::from("y".repeat(50_000))),
    );
    assert!(store.get(&huge.id).is_some());
    assert_eq!(store.counts().0, 1);
    // The next one pushes it out.
    let small = finished(&store, FinalOutcome::Success(Value::from(1)));
    assert!(store.get(&huge.id).is_none() && store.get(&small.id).is_some());
}

#[test]
fn a_list_stops_at_its_byte_budget_but_lists_at_least_one() {
    let store = Store::new(Duration::from_secs(60), 100, 100, usize::MAX, None);
    let big = "x".repeat(1000);
    let rs: Vec<_> = (0..4)
        .map(|_| finished(&store, FinalOutcome::Success(Value::from(big.clone()))))
        .collect();
    let w = RECORD_OVERHEAD + big.len() + 2;
    let (listed, cut) = store.list(10, 2 * w);
    assert!(cut);
    let ids: Vec<_> = listed.iter().map(|r| r.id).collect();
    assert_eq!(ids, [rs[3].id, rs[2].id], "newest first");
    let (listed, cut) = store.list(10, 1);
    assert_eq!((listed.len(), cut), (1, true));
    let (listed, cut) = store.list(2, usize::MAX);
    assert_eq!((listed.len(), cut), (2, false));
}
