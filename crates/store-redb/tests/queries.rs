//! Queries answer exactly what a full scan with the same conditions
//! answers, whatever the history: random data, random interleavings of
//! local writes, operations replicated from another replica, deletes,
//! index creation (and builds interrupted part way), drops and restarts.
//! And every index holds exactly the entries its nodes call for.

use pluresdb_core::index::{encode_value, entries_for, field_value, IndexEntry};
use pluresdb_core::query::{run, Condition, Direction, Query, Sort, Step};
use pluresdb_core::{Database, IndexRange, IndexSpec, LastWriterWins, MemoryStore, Store};
use pluresdb_store_redb::RedbStore;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};
use std::ops::Bound;

const IDS: [&str; 12] = ["u:0", "u:1", "u:2", "u:3", "u:4", "u:10", "u:11", "p:0", "p:1", "p:2", "q", "u:"];

#[derive(Clone, Debug)]
enum Action {
    Put(usize, Value),
    Update(usize, Value),
    Delete(usize),
    /// A write on the other replica, then a sync of everything it holds.
    Remote(usize, Value, bool),
    Sync,
    CreateIndex(usize),
    BuildStep(usize, usize),
    /// Creates the index if missing and builds it to the end.
    Build(usize),
    Drop(usize),
    Restart,
    Query(Query),
}

fn field_values() -> impl Strategy<Value = Value> {
    prop_oneof![
        5 => (0i64..6).prop_map(Value::from),
        1 => (-3.0f64..3.0).prop_map(|f| json!((f * 2.0).round() / 2.0)),
        3 => prop::sample::select(vec!["a", "ab", "b", "", "ba"]).prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => Just(json!([1, 2])),
        1 => Just(json!({"x": 1})),
    ]
}

fn node_values() -> impl Strategy<Value = Value> {
    (
        prop::option::of(field_values()),
        prop::option::of(field_values()),
        prop::option::of(0..IDS.len()),
        prop::option::of(0..IDS.len()),
        prop::option::of(field_values()),
    )
        .prop_map(|(age, name, friend, boss, city)| {
            let mut value = serde_json::Map::new();
            if let Some(age) = age {
                value.insert("age".into(), age);
            }
            if let Some(name) = name {
                value.insert("name".into(), name);
            }
            if let Some(friend) = friend {
                value.insert("friend".into(), json!({"#": IDS[friend]}));
            }
            if let Some(boss) = boss {
                value.insert("boss".into(), json!({"#": IDS[boss]}));
            }
            if let Some(city) = city {
                value.insert("address".into(), json!({"city": city}));
            }
            Value::Object(value)
        })
}

/// The indexes the actions create, by position.
fn specs() -> Vec<IndexSpec> {
    let field = |prefix: &str, field: &str| IndexSpec { prefix: prefix.into(), field: Some(field.into()), ..IndexSpec::default() };
    vec![
        field("u:", "age"),
        field("", "age"),
        field("u:", "name"),
        field("", "address.city"),
        field("u:1", "age"),
        IndexSpec { links: true, ..IndexSpec::default() },
        IndexSpec { prefix: "u:".into(), links: true, ..IndexSpec::default() },
    ]
}

fn conditions() -> impl Strategy<Value = Vec<Condition>> {
    let field = prop::sample::select(vec!["age", "age", "name", "name", "address.city", "friend.#"]);
    let op = prop::sample::select(vec![
        "=", "!=", "<", "<=", ">", ">", ">=", "between", "between", "prefix", "prefix", "exists", "exists", "in", "in",
    ]);
    let condition = (field, op, field_values(), field_values(), any::<bool>()).prop_filter_map("operand", |(field, op, a, b, yes)| {
        let value = match op {
            "between" => json!([a, b]),
            "exists" => json!(yes),
            "in" => json!([a, b]),
            _ => a,
        };
        let condition = Condition { field: field.into(), op: op.into(), value };
        condition.check().is_ok().then_some(condition)
    });
    prop::collection::vec(condition, 0..3)
}

/// Conditions that select more often: exists, ranges over small numbers,
/// string prefixes.
fn likely_conditions() -> impl Strategy<Value = Vec<Condition>> {
    let field = prop::sample::select(vec!["age", "name", "address.city"]);
    let condition = (field, 0i64..6, 0i64..6, prop::sample::select(vec!["", "a", "b"]), 0..4).prop_map(|(field, x, y, p, kind)| {
        let (op, value) = match kind {
            0 => ("exists", json!(true)),
            1 => ("between", json!([x.min(y), x.max(y)])),
            2 => ("prefix", json!(p)),
            _ => (">=", json!(x)),
        };
        Condition { field: field.into(), op: op.into(), value }
    });
    prop_oneof![prop::collection::vec(condition, 1..3), conditions()]
}

fn queries() -> impl Strategy<Value = Query> {
    let prefix = prop::sample::select(vec!["", "", "u:", "u:", "u:1", "p:", "x"]);
    let sort = prop::option::weighted(0.3, (prop::sample::select(vec!["age", "name", "address.city"]), any::<bool>()));
    let step = (
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["friend", "boss"])),
        prop::sample::select(vec!["", "u:", "p:"]),
        conditions(),
    )
        .prop_map(|(out, field, prefix, conditions)| Step {
            direction: if out { Direction::Out } else { Direction::In },
            field: field.map(str::to_owned),
            prefix: prefix.into(),
            conditions,
        });
    (prefix, likely_conditions(), sort, 1usize..5, prop_oneof![3 => Just(Vec::new()), 2 => prop::collection::vec(step, 1..3)]).prop_map(
        |(prefix, conditions, sort, limit, steps)| {
            let sort = if steps.is_empty() { sort.map(|(field, descending)| Sort { field: field.into(), descending }) } else { None };
            Query { prefix: prefix.into(), conditions, sort, limit: Some(limit), cursor: None, steps }
        },
    )
}

fn actions() -> impl Strategy<Value = Vec<Action>> {
    let n = specs().len();
    let action = prop_oneof![
        4 => (0..IDS.len(), node_values()).prop_map(|(i, v)| Action::Put(i, v)),
        2 => (0..IDS.len(), node_values()).prop_map(|(i, v)| Action::Update(i, v)),
        1 => (0..IDS.len()).prop_map(Action::Delete),
        3 => (0..IDS.len(), node_values(), any::<bool>()).prop_map(|(i, v, delete)| Action::Remote(i, v, delete)),
        1 => Just(Action::Sync),
        2 => (0..n).prop_map(Action::CreateIndex),
        2 => (0..n).prop_map(Action::Build),
        3 => (0..n, 1usize..14).prop_map(|(i, step)| Action::BuildStep(i, step)),
        1 => (0..n).prop_map(Action::Drop),
        1 => Just(Action::Restart),
        6 => queries().prop_map(Action::Query),
    ];
    let first = (0..IDS.len(), node_values()).prop_map(|(i, v)| Action::Put(i, v));
    (prop::collection::vec(first, 4..16), prop::collection::vec(action, 1..80)).prop_map(|(mut first, rest)| {
        first.extend(rest);
        first
    })
}

/// Every page of `query`, one after the other.
fn all_pages<S: Store>(db: &Database<S>, query: &Query) -> Result<(Vec<String>, pluresdb_core::query::Plan), pluresdb_core::Error> {
    let mut query = query.clone();
    let mut ids = Vec::new();
    let mut plan = None;
    for _ in 0..100 {
        let page = db.query(&query)?;
        plan.get_or_insert(page.plan.clone());
        ids.extend(page.nodes.iter().map(|n| n.id.clone()));
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => return Ok((ids, plan.unwrap_or_default())),
        }
    }
    panic!("more than 100 pages for {query:?}");
}

/// What a full scan answers for `query`: every page of the query run with
/// no index; with a sort, the nodes that have the field in (value, id)
/// order.
fn scanned<S: Store>(db: &Database<S>, query: &Query) -> Vec<String> {
    let mut unsorted = Query { sort: None, cursor: None, limit: Some(10_000), ..query.clone() };
    let mut ids = Vec::new();
    loop {
        let page = run(db.store(), &LastWriterWins, &[], &unsorted).unwrap();
        assert!(page.plan.select.as_ref().is_some_and(|a| a.method == "scan"));
        ids.extend(page.nodes);
        match page.next {
            Some(next) => unsorted.cursor = Some(next),
            None => break,
        }
    }
    match &query.sort {
        None => ids.into_iter().map(|n| n.id).collect(),
        Some(sort) => {
            let mut keyed: Vec<(Vec<u8>, String)> =
                ids.into_iter().filter_map(|n| field_value(&n.value, &sort.field).map(|v| (encode_value(v), n.id.clone()))).collect();
            keyed.sort();
            if sort.descending {
                keyed.reverse();
            }
            keyed.into_iter().map(|(_, id)| id).collect()
        }
    }
}

/// Every index holds exactly the entries of the nodes it covers (ready
/// ones) or at least those of the nodes built so far and written since
/// (building ones: never an entry that is not true).
fn check_entries<S: Store>(db: &Database<S>) {
    let all = db.list("", None, usize::MAX).unwrap();
    for def in db.indexes() {
        let range = IndexRange { index: def.number, lower: Bound::Unbounded, upper: Bound::Unbounded, descending: false };
        let stored: Vec<(Vec<u8>, String)> = db.store().index_range(&range, usize::MAX).unwrap();
        let mut expected: Vec<IndexEntry> = all.iter().flat_map(|n| entries_for(std::slice::from_ref(def), &n.id, Some(n))).collect();
        expected.sort();
        let expected: Vec<(Vec<u8>, String)> = expected.into_iter().map(|e| (e.key, e.id)).collect();
        if def.is_ready() {
            assert_eq!(stored, expected, "index {}", def.name);
        } else {
            assert!(stored.iter().all(|e| expected.contains(e)), "index {} holds an entry no node calls for", def.name);
        }
    }
}

fn run_case(actions: &[Action]) {
    let dir = tempfile::tempdir().unwrap();
    let open = || Database::open(RedbStore::open(dir.path()).unwrap(), "a").unwrap();
    let mut a = open();
    let mut b = Database::open(MemoryStore::new(), "b").unwrap();
    let mut now = 1_000u64;
    let specs = specs();
    let sync = |a: &mut Database<RedbStore>, b: &Database<MemoryStore>, now: u64| {
        let ops = b.ops_after("b", a.version_vector().get("b"), usize::MAX).unwrap();
        a.apply_remote(ops, now).unwrap();
    };
    for action in actions {
        now += 1;
        match action {
            Action::Put(i, v) => {
                a.put(IDS[*i], v.clone(), now).unwrap();
            }
            Action::Update(i, v) => {
                a.update(IDS[*i], v.clone(), now).unwrap();
            }
            Action::Delete(i) => {
                let _ = a.delete(IDS[*i], now);
            }
            Action::Remote(i, v, delete) => {
                if *delete {
                    let _ = b.delete(IDS[*i], now);
                } else {
                    b.update(IDS[*i], v.clone(), now).unwrap();
                }
                // Some remote writes wait for a later sync.
                if now.is_multiple_of(2) {
                    sync(&mut a, &b, now);
                }
            }
            Action::Sync => sync(&mut a, &b, now),
            Action::CreateIndex(i) => {
                let _ = a.create_index(&specs[*i]);
            }
            Action::BuildStep(i, step) => {
                let name = specs[*i].to_def(0, "", 0).unwrap().name;
                let _ = a.build_index_step(&name, *step);
            }
            Action::Build(i) => {
                let _ = a.create_index(&specs[*i]);
                let name = specs[*i].to_def(0, "", 0).unwrap().name;
                while !a.build_index_step(&name, 5).unwrap().is_ready() {}
            }
            Action::Drop(i) => {
                let name = specs[*i].to_def(0, "", 0).unwrap().name;
                let _ = a.drop_index(&name);
            }
            Action::Restart => {
                drop(a);
                a = open();
            }
            Action::Query(query) => {
                let (got, plan) = match all_pages(&a, query) {
                    Ok(answer) => answer,
                    // Sorting needs a ready index.
                    Err(err) if query.sort.is_some() && err.to_string().contains("needs a ready index") => continue,
                    Err(err) => panic!("{query:?}: {err}"),
                };
                let mut expected = scanned(&a, query);
                // Without a sort, pages follow the order of the index used
                // (or ids): the same nodes, each once.
                let mut got = got;
                if query.sort.is_none() {
                    let count = got.len();
                    got.sort();
                    got.dedup();
                    assert_eq!(got.len(), count, "a node on two pages: {query:?}");
                    expected.sort();
                }
                assert_eq!(got, expected, "query {query:?}, plan {plan:?}");
            }
        }
        check_entries(&a);
    }
}

#[test]
fn queries_answer_what_a_full_scan_answers() {
    let cases = std::env::var("PLURESDB_QUERY_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(48);
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    // Seeded: every run tries the same cases.
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    runner
        .run(&actions(), |actions| {
            run_case(&actions);
            Ok(())
        })
        .unwrap();
}

/// Sort needs a ready index; the error says how to make one.
#[test]
fn sorting_without_an_index_is_refused_with_the_fix() {
    let db = Database::open(MemoryStore::new(), "a").unwrap();
    let query = Query { prefix: "user:".into(), sort: Some(Sort { field: "age".into(), descending: false }), ..Query::default() };
    let err = db.query(&query).unwrap_err().to_string();
    assert!(err.contains("index create --prefix \"user:\" age"), "{err}");
}

/// The plan names the index a query uses, or says it scans; an index that
/// is still building is not used.
#[test]
fn explain_names_the_index_or_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "a").unwrap();
    for i in 0..10 {
        db.put(&format!("user:{i}"), json!({"age": i}), 1_000 + i).unwrap();
    }
    let query: Query = serde_json::from_value(json!({"prefix": "user:", "where": [{"field": "age", "op": ">=", "value": 7}]})).unwrap();
    let plan = |db: &Database<RedbStore>| db.query(&query).unwrap().plan.select.unwrap();
    assert_eq!(plan(&db).method, "scan");
    db.create_index(&IndexSpec { prefix: "user:".into(), field: Some("age".into()), ..IndexSpec::default() }).unwrap();
    assert_eq!(plan(&db).method, "scan", "not ready yet");
    let built = db.build_index_step("user:age", 4).unwrap();
    assert!(!built.is_ready());
    while !db.build_index_step("user:age", 4).unwrap().is_ready() {}
    let access = plan(&db);
    assert_eq!((access.method.as_str(), access.index.as_deref()), ("index", Some("user:age")));
    let ids: Vec<String> = db.query(&query).unwrap().nodes.into_iter().map(|n| n.id).collect();
    assert_eq!(ids, ["user:7", "user:8", "user:9"]);
    // Survives a restart, and a drop removes it.
    drop(db);
    let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "a").unwrap();
    assert_eq!(plan(&db).method, "index");
    db.drop_index("user:age").unwrap();
    assert_eq!(plan(&db).method, "scan");
    assert!(db.indexes().is_empty());
    assert!(matches!(db.drop_index("user:age"), Err(pluresdb_core::Error::NoSuchIndex { .. })));
}

/// A replica reopened with another resolver builds its indexes again
/// (their entries held the other resolver's view).
#[test]
fn another_resolver_rebuilds_the_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "a").unwrap();
    db.put("n:1", json!({"v": 1}), 1_000).unwrap();
    db.create_index(&IndexSpec { field: Some("v".into()), ..IndexSpec::default() }).unwrap();
    db.build_index_step("v", 100).unwrap();
    assert!(db.indexes()[0].is_ready());
    assert!(db.rebuild_indexes_of_other_resolvers().unwrap().is_empty());
    drop(db);
    let mut db = Database::open(RedbStore::open(dir.path()).unwrap(), "a")
        .unwrap()
        .with_resolver(std::sync::Arc::new(pluresdb_core::FirstWriterWins));
    assert_eq!(db.rebuild_indexes_of_other_resolvers().unwrap(), ["v"]);
    assert!(!db.indexes()[0].is_ready());
    assert_eq!(db.indexes()[0].resolver, "first-writer-wins");
}
