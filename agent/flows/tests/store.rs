//! Flow store: capacity bounds, overwrite, fan-out with bounded queues.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_flows::FlowStore;
use weir_flows::flow::{Flow, Timestamp};
use weir_flows::store::{DEFAULT_CAPACITY, Item, MAX_CAPACITY, StoreError, TryRecvError};

fn flow(n: i64) -> Flow {
    Flow {
        time: Some(Timestamp::from_unix_nanos(n)),
        ..Flow::default()
    }
}

fn n_of(f: &Flow) -> i64 {
    f.time.unwrap().unix_nanos()
}

#[test]
fn capacity_bounds() {
    assert_eq!(FlowStore::new().capacity(), DEFAULT_CAPACITY);
    assert_eq!(DEFAULT_CAPACITY, 4095);
    assert_eq!(FlowStore::with_capacity(65_535).unwrap().capacity(), 65_535);
    assert_eq!(MAX_CAPACITY, 65_535);
    assert!(matches!(
        FlowStore::with_capacity(65_536),
        Err(StoreError::InvalidCapacity { requested: 65_536 })
    ));
    assert!(FlowStore::with_capacity(0).is_err());
    let msg = FlowStore::with_capacity(70_000).unwrap_err().to_string();
    assert!(msg.contains("70000") && msg.contains("65535"), "{msg}");
}

#[test]
fn overwrite_keeps_last_n_and_seen_counts_all() {
    let s = FlowStore::with_capacity(7).unwrap();
    assert!(s.is_empty());
    for i in 0..20 {
        s.push(flow(i));
    }
    assert_eq!(s.len(), 7);
    assert_eq!(s.seen(), 20);
    let all: Vec<i64> = s.last(100).iter().map(|f| n_of(f)).collect();
    assert_eq!(all, (13..20).collect::<Vec<_>>());
    let last3: Vec<i64> = s.last(3).iter().map(|f| n_of(f)).collect();
    assert_eq!(last3, vec![17, 18, 19]);
    assert!(s.last(0).is_empty());

    // Clones share the ring.
    let c = s.clone();
    c.push(flow(20));
    assert_eq!(s.seen(), 21);
    assert_eq!(n_of(&s.last(1)[0]), 20);
}

#[test]
fn push_returns_the_shared_flow() {
    let s = FlowStore::new();
    let a = s.push(flow(1));
    assert!(Arc::ptr_eq(&a, &s.last(1)[0]));
}

#[tokio::test]
async fn slow_subscriber_loses_fast_one_gets_all_and_push_never_blocks() {
    let s = FlowStore::with_capacity(100).unwrap();
    let mut fast = s.subscribe("fast", 100_000);
    let mut slow = s.subscribe("slow", 10);

    let started = Instant::now();
    for i in 0..50_000 {
        s.push(flow(i));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "pushing 50k flows took {:?}: push must not wait for consumers",
        started.elapsed()
    );

    // Fast: everything, in order, no loss.
    for i in 0..50_000 {
        match fast.try_recv() {
            Ok(Item::Flow(f)) => assert_eq!(n_of(&f), i),
            other => panic!("fast subscriber got {other:?} at {i}"),
        }
    }
    assert_eq!(fast.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(fast.stats().dropped, 0);

    // Slow: its 10, then the loss.
    let st = slow.stats();
    assert_eq!((st.len, st.capacity, st.dropped), (10, 10, 49_990));
    for i in 0..10 {
        match slow.recv().await {
            Some(Item::Flow(f)) => assert_eq!(n_of(&f), i),
            other => panic!("slow subscriber got {other:?}"),
        }
    }
    assert_eq!(slow.recv().await, Some(Item::Lost(49_990)));
    assert_eq!(slow.try_recv(), Err(TryRecvError::Empty));

    // After catching up it receives new flows again; a later overflow is
    // reported at the position of the gap.
    for i in 0..12 {
        s.push(flow(100 + i));
    }
    let mut got = Vec::new();
    while let Ok(item) = slow.try_recv() {
        got.push(item);
    }
    assert_eq!(got.len(), 11);
    assert!(matches!(&got[9], Item::Flow(f) if n_of(f) == 109));
    assert_eq!(got[10], Item::Lost(2));
    assert_eq!(slow.stats().dropped, 49_992);

    let stats = s.subscriber_stats();
    let names: Vec<_> = stats.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, vec!["fast", "slow"]);
}

#[tokio::test]
async fn lost_marker_comes_before_the_flows_after_the_gap() {
    let s = FlowStore::new();
    let mut sub = s.subscribe("q", 2);
    for i in 0..5 {
        s.push(flow(i)); // 0, 1 queued; 2, 3, 4 dropped
    }
    assert!(matches!(sub.recv().await, Some(Item::Flow(f)) if n_of(&f) == 0));
    s.push(flow(5)); // room for one: the gap marker goes first
    assert!(matches!(sub.recv().await, Some(Item::Flow(f)) if n_of(&f) == 1));
    assert_eq!(sub.recv().await, Some(Item::Lost(3)));
    assert!(matches!(sub.recv().await, Some(Item::Flow(f)) if n_of(&f) == 5));
}

#[tokio::test]
async fn recv_wakes_on_push_from_another_task() {
    let s = FlowStore::new();
    let mut sub = s.subscribe("w", 16);
    let s2 = s.clone();
    let h = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        s2.push(flow(42));
    });
    let got = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("recv woke up");
    assert!(matches!(got, Some(Item::Flow(f)) if n_of(&f) == 42));
    h.await.unwrap();
}

#[tokio::test]
async fn dropping_the_store_ends_subscriptions_after_drain() {
    let s = FlowStore::new();
    let mut sub = s.subscribe("d", 16);
    s.push(flow(1));
    drop(s);
    assert!(matches!(sub.recv().await, Some(Item::Flow(_))));
    assert_eq!(sub.recv().await, None);
    assert_eq!(sub.try_recv(), Err(TryRecvError::Closed));
}

#[tokio::test]
async fn close_subscribers_and_unsubscribe() {
    let s = FlowStore::new();
    let mut a = s.subscribe("a", 4);
    let b = s.subscribe("b", 4);
    drop(b);
    s.push(flow(1));
    let live = |s: &FlowStore| -> Vec<(String, usize)> {
        s.subscriber_stats()
            .into_iter()
            .map(|q| (q.name, q.subscribers))
            .collect()
    };
    assert_eq!(
        live(&s),
        vec![("a".to_string(), 1), ("b".to_string(), 0)],
        "dropped subscription is removed; its name's totals stay"
    );
    s.close_subscribers();
    assert!(matches!(a.recv().await, Some(Item::Flow(_))));
    assert_eq!(a.recv().await, None);
    assert!(s.subscriber_stats().iter().all(|q| q.subscribers == 0));
    // The ring still works.
    s.push(flow(2));
    assert_eq!(s.len(), 2);
}

#[test]
fn subscriptions_sharing_a_name_are_reported_together_and_drops_never_go_down() {
    let s = FlowStore::new();
    let a = s.subscribe("api", 1);
    let b = s.subscribe("api", 2);
    for i in 0..3 {
        s.push(flow(i));
    }
    // a keeps 1 and drops 2; b keeps 2 and drops 1.
    let st = s.subscriber_stats();
    assert_eq!(st.len(), 1);
    assert_eq!(
        (st[0].len, st[0].capacity, st[0].dropped, st[0].subscribers),
        (3, 3, 3, 2)
    );
    drop(a);
    let st = s.subscriber_stats();
    assert_eq!((st[0].len, st[0].dropped, st[0].subscribers), (2, 3, 1));
    drop(b);
    assert_eq!(s.subscriber_stats()[0].dropped, 3);
}
