//! The node's durable store (issue 18): its write pattern under SQLite (WAL,
//! `synchronous=FULL`, as `src/service/journal.rs` opens it) and under redb
//! (`Durability::Immediate`), interleaved A B A B in one run: per task an insert, a start
//! and a final update with a small result, and the delete of the task 10,000 before it
//! (the eviction of a node keeping 10,000 results); `batch` tasks' writes per commit (one
//! sync each). Prints tasks/s and the file's size at the end.
//!
//! `cargo bench --features service --bench store [-- TASKS]` (default 50,000; `--test`: a
//! short smoke run).
use std::time::Instant;

fn row(seq: u64, state: &str, result: Option<&str>) -> Vec<u8> {
    format!("{{\"seq\":{seq},\"id\":\"6f1c9e4e-0d7a-4b8e-9a51-3c2d1e0f{seq:04x}\",\"name\":\"add\",\"request\":{{\"args\":[{seq},1]}},\"state\":\"{state}\",\"result\":{}}}", result.unwrap_or("null")).into_bytes()
}

fn sqlite(dir: &std::path::Path, tasks: u64, batch: u64) -> f64 {
    let c = rusqlite::Connection::open(dir.join("s.db")).unwrap();
    c.pragma_update(None, "locking_mode", "EXCLUSIVE").unwrap();
    c.pragma_update(None, "auto_vacuum", "INCREMENTAL").unwrap();
    let _: String = c
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.execute_batch("CREATE TABLE t (seq INTEGER PRIMARY KEY, id BLOB NOT NULL, name TEXT, request TEXT, state TEXT, attempts INTEGER, result TEXT)").unwrap();
    let mut c = c;
    let t0 = Instant::now();
    let mut seq = 0;
    while seq < tasks {
        let tx = c.transaction().unwrap();
        for s in seq..seq + batch {
            tx.prepare_cached("INSERT INTO t (seq, id, name, request, state, attempts) VALUES (?1, ?2, 'add', ?3, 'PENDING', 0)").unwrap()
                .execute(rusqlite::params![s as i64, &[7u8; 16][..], format!("{{\"args\":[{s},1]}}")]).unwrap();
            if s >= batch {
                let p = (s - batch) as i64;
                tx.prepare_cached("UPDATE t SET state='STARTED', attempts=1 WHERE seq=?1")
                    .unwrap()
                    .execute([p])
                    .unwrap();
                tx.prepare_cached(
                    "UPDATE t SET state='SUCCESS', result=?2, request=NULL WHERE seq=?1",
                )
                .unwrap()
                .execute(rusqlite::params![p, (p + 1).to_string()])
                .unwrap();
                if p >= 10_000 {
                    tx.prepare_cached("DELETE FROM t WHERE seq=?1")
                        .unwrap()
                        .execute([p - 10_000])
                        .unwrap();
                }
            }
        }
        tx.commit().unwrap();
        let free: i64 = c
            .pragma_query_value(None, "freelist_count", |r| r.get(0))
            .unwrap();
        if free > 256 {
            c.execute_batch("PRAGMA incremental_vacuum").unwrap();
        }
        seq += batch;
    }
    let rate = tasks as f64 / t0.elapsed().as_secs_f64();
    drop(c);
    println!(
        "  sqlite file {} bytes",
        std::fs::metadata(dir.join("s.db")).unwrap().len()
    );
    rate
}

const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");

fn redb(dir: &std::path::Path, tasks: u64, batch: u64) -> f64 {
    let db = redb::Database::create(dir.join("r.redb")).unwrap();
    let t0 = Instant::now();
    let mut seq = 0;
    while seq < tasks {
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(T).unwrap();
            for s in seq..seq + batch {
                t.insert(s, row(s, "PENDING", None).as_slice()).unwrap();
                if s >= batch {
                    let p = s - batch;
                    t.insert(p, row(p, "STARTED", None).as_slice()).unwrap();
                    t.insert(p, row(p, "SUCCESS", Some(&(p + 1).to_string())).as_slice())
                        .unwrap();
                    if p >= 10_000 {
                        t.remove(p - 10_000).unwrap();
                    }
                }
            }
        }
        tx.commit().unwrap();
        seq += batch;
    }
    let rate = tasks as f64 / t0.elapsed().as_secs_f64();
    drop(db);
    println!(
        "  redb file {} bytes",
        std::fs::metadata(dir.join("r.redb")).unwrap().len()
    );
    rate
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let tasks: u64 = if args.iter().any(|a| a == "--test") {
        640
    } else {
        args.iter().find_map(|a| a.parse().ok()).unwrap_or(50_000)
    };
    for batch in [4u64, 8, 32] {
        for round in 0..2 {
            for which in ["sqlite", "redb"] {
                let dir = std::env::temp_dir().join(format!(
                    "weft-store-bench-{}-{which}-{batch}-{round}",
                    std::process::id()
                ));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                let rate = if which == "sqlite" {
                    sqlite(&dir, tasks, batch)
                } else {
                    redb(&dir, tasks, batch)
                };
                println!(
                    "{which:6} batch {batch:2} round {round}: {rate:8.0} tasks/s ({:.0} commits/s)",
                    rate / batch as f64
                );
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}
