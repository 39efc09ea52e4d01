//! The Redis session directory: routing to every node of a user, surviving a Redis restart,
//! serving locally while Redis is unreachable.

use super::*;

#[tokio::test]
async fn a_user_on_two_nodes_gets_a_push_on_both_and_one_ack_settles_it() {
    let scope = Scope::new("two-nodes");
    let a = scope.node("a").spawn().await;
    let b = scope.node("b").spawn().await;
    let mut on_a = a.connect(7, 9).await;
    let mut on_b = b.connect(7, 9).await;
    await_sessions(&a, 7, 9, 2).await;

    let n = a.push(7, 9, "both", b"hello").await.expect("pushed");
    assert_eq!(n, 2, "one connection on each node");
    let (ma, mb) = (on_a.recv_msg(JSON).await, on_b.recv_msg(JSON).await);
    assert!(is_push(&ma, "both", b"hello") && is_push(&mb, "both", b"hello"));
    on_b.ack("both", JSON).await;
    crate::assert_eventually!(b.handle.pending_pushes() == 0, "the ack on b settles b's copy");
}

#[tokio::test]
async fn a_redis_restart_is_survived_and_the_directory_rebuilt() {
    let mut redis = Private::redis();
    let mut scope = Scope::new("redis-restart");
    scope.redis = format!("redis://{}", redis.addr());
    let a = scope.node("a").spawn().await;
    let b = scope.node("b").spawn().await;
    let mut client = b.connect(6, 9).await;
    await_sessions(&a, 6, 9, 1).await;
    crate::assert_within!(10, a.get("/ready").await.0 == 200, "a ready");

    redis.kill();
    crate::assert_within!(10, b.get("/ready").await.0 == 503, "not ready without the directory");
    assert!(b.get("/ready").await.1.contains("session directory"));
    // Existing connections and local pushes keep working.
    assert_eq!(b.push(6, 9, "local", b"still here").await.expect("local push"), 1);
    assert!(is_push(&client.recv_msg(JSON).await, "local", b"still here"));
    let err = a.push(6, 9, "remote", b"x").await.expect_err("a cannot find the user");
    assert_eq!(err.code(), tonic::Code::Unavailable);

    redis.restart(); // empty: Redis keeps nothing here
    crate::assert_within!(15, b.get("/ready").await.0 == 200, "ready again");
    await_sessions(&a, 6, 9, 1).await;
    assert_eq!(a.push(6, 9, "rebuilt", b"found").await.expect("routed"), 1);
    assert!(is_push(&client.recv_msg(JSON).await, "rebuilt", b"found"));
}

#[tokio::test]
async fn an_unreachable_redis_at_start_leaves_the_node_serving_locally() {
    let mut scope = Scope::new("no-redis");
    scope.redis = format!("redis://127.0.0.1:{}", free_port());
    let node = scope.node("a").spawn().await;
    let mut client = node.connect(1, 9).await;
    crate::assert_within!(10, node.get("/ready").await.0 == 503, "not ready");
    assert_eq!(node.get("/health").await.0, 200);
    assert_eq!(node.push(1, 9, "k", b"local").await.expect("local push works"), 1);
    assert!(is_push(&client.recv_msg(JSON).await, "k", b"local"));
}
