//! Three hubs' consensus nodes in one process, talking Raft over real QUIC with mutual
//! TLS on loopback: election, forwarded writes, linearizable reads on followers, leader
//! loss, loss of quorum, restart from sled, snapshot install on a hub that fell behind and
//! on a new learner. Waits on Raft metrics, never on sleeps.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nave_consensus::network::node_addr;
use nave_consensus::node::{added_hub_id, ConsensusNode, HubChange, Role};
use nave_consensus::state::{Command, CommandResult, Limits};
use nave_consensus::tls::{self, ClusterCa};

struct Hub {
    node: Arc<ConsensusNode>,
    endpoint: quinn::Endpoint,
}

fn free_udp() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("free port")
}

async fn start(dir: &std::path::Path, ca: &ClusterCa, id: u64, voters: &BTreeMap<u64, openraft::BasicNode>) -> Hub {
    let addr: std::net::SocketAddr =
        voters[&id].addr.split_once('@').map(|(_, a)| a.parse().expect("addr")).expect("addr");
    start_as(dir, ca, &format!("h{id}"), id, addr, Role::Founder(voters.clone())).await
}

async fn start_as(
    dir: &std::path::Path,
    ca: &ClusterCa,
    name: &str,
    id: u64,
    addr: std::net::SocketAddr,
    role: Role,
) -> Hub {
    let identity = ca.ensure_hub(&dir.join(name), name, std::time::Duration::from_secs(30 * 86400)).expect("identity");
    // A restarted node reuses its port; the stopped endpoint may hold it for a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let endpoint = loop {
        match tls::endpoint(&identity, addr, &[tls::ALPN_RAFT]) {
            Ok(e) => break e,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("endpoint: {e}"),
        }
    };
    // Likewise its sled files, until the stopped node's last handle is gone.
    let node = loop {
        match ConsensusNode::start(&dir.join(name), id, role.clone(), endpoint.clone(), &identity).await {
            Ok(n) => break n,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("node starts: {e}"),
        }
    };
    serve(&endpoint, &node);
    Hub { node, endpoint }
}

/// Answers the node's Raft RPCs on its endpoint.
fn serve(endpoint: &quinn::Endpoint, node: &Arc<ConsensusNode>) {
    let (ep, n) = (endpoint.clone(), node.clone());
    tokio::spawn(async move {
        while let Some(inc) = ep.accept().await {
            let n = n.clone();
            tokio::spawn(async move {
                if let Ok(conn) = inc.await {
                    n.serve_connection(conn).await;
                }
            });
        }
    });
}

async fn stop(h: &Hub) {
    let _ = tokio::time::timeout(Duration::from_secs(5), h.node.shutdown()).await;
    h.endpoint.close(0u32.into(), b"stop");
    let _ = tokio::time::timeout(Duration::from_secs(5), h.endpoint.wait_idle()).await;
}

async fn leader_among(hubs: &[&Hub], timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        for h in hubs {
            let f = h.node.figures();
            if f.leader == Some(f.id) && f.state == "Leader" {
                return f.id;
            }
        }
        assert!(Instant::now() < deadline, "no leader within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Voters = BTreeMap<u64, openraft::BasicNode>;

/// Three hubs on fresh loopback ports with a fresh CA, in a temporary directory.
async fn three_hubs() -> (tempfile::TempDir, ClusterCa, Voters, Vec<Hub>) {
    let dir = tempfile::tempdir().expect("dir");
    let ca = ClusterCa::load_or_create(&dir.path().join("ca")).expect("ca");
    let voters: Voters = (1..=3).map(|i| (i, node_addr(&format!("h{i}"), free_udp()))).collect();
    let mut hubs = Vec::new();
    for i in 1..=3 {
        hubs.push(start(dir.path(), &ca, i, &voters).await);
    }
    (dir, ca, voters, hubs)
}

fn key(name: &str, n: u8) -> Command {
    Command::CreateKey { name: name.into(), digest: format!("{n:02x}").repeat(32), limits: Limits::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hubs_elect_replicate_fail_over_and_restart() {
    let (dir, ca, voters, mut hubs) = three_hubs().await;
    let leader = leader_among(&hubs.iter().collect::<Vec<_>>(), Duration::from_secs(10)).await;
    let follower = hubs.iter().find(|h| h.node.id != leader).expect("a follower");
    let other = hubs.iter().find(|h| h.node.id != leader && h.node.id != follower.node.id).expect("another follower");

    // A write through a follower is forwarded; a read on the other follower sees it.
    assert_eq!(follower.node.write(key("alice", 1)).await.expect("write"), CommandResult::Done);
    let seen = other.node.read(|a| a.state.key_by_name("alice").is_some()).await.expect("read");
    assert!(seen, "a linearizable read on another follower sees the acknowledged write");

    // Many concurrent writers from every hub: all acknowledged, all visible everywhere.
    let mut tasks = Vec::new();
    for (i, h) in hubs.iter().enumerate() {
        for j in 0..20u8 {
            let node = h.node.clone();
            tasks.push(tokio::spawn(async move { node.write(key(&format!("k{i}-{j}"), 10 + i as u8 * 20 + j)).await }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.expect("task").expect("write"), CommandResult::Done);
    }
    for h in &hubs {
        assert_eq!(h.node.read(|a| a.state.keys.len()).await.expect("read"), 61);
    }

    // The leader dies: the others elect a new one and accept writes within seconds.
    let old = hubs.iter().position(|h| h.node.id == leader).expect("leader");
    let old = hubs.remove(old);
    stop(&old).await;
    drop(old);
    let killed = Instant::now();
    let survivors: Vec<&Hub> = hubs.iter().collect();
    survivors[0].node.write(key("after-failover", 200)).await.expect("write after failover");
    let failover = killed.elapsed();
    println!("leader killed -> first acknowledged write: {failover:?}");
    assert!(failover < Duration::from_secs(10));
    assert!(survivors[1].node.read(|a| a.state.key_by_name("after-failover").is_some()).await.expect("read"));

    // Restart the old leader from its sled files: it has everything it acknowledged, and
    // catches up on what it missed.
    let restarted = start(dir.path(), &ca, leader, &voters).await;
    let caught_up = restarted
        .node
        .read(|a| (a.state.key_by_name("alice").is_some(), a.state.key_by_name("after-failover").is_some()))
        .await;
    assert_eq!(caught_up.expect("read after restart"), (true, true));

    // With two of three hubs gone there is no quorum: a clear error, not a hang.
    stop(survivors[0]).await;
    stop(&restarted).await;
    let t = Instant::now();
    let res = survivors[1].node.write(key("lost", 250)).await;
    assert!(res.is_err(), "a minority must not accept writes: {res:?}");
    assert!(survivors[1].node.read(|a| a.state.keys.len()).await.is_err(), "nor serve reads");
    assert!(t.elapsed() < Duration::from_secs(15));
    stop(survivors[1]).await;
}

/// A fourth hub joins the running cluster (`nave admin hub add`): a learner until it has
/// the state, then a voter. Removing a founding hub (the leader) leaves the cluster
/// serving, and the new hub's vote counts: with one more founder stopped, the two hubs
/// left still commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_are_added_and_removed_while_the_cluster_serves() {
    let (dir, ca, _voters, mut hubs) = three_hubs().await;
    let leader = leader_among(&hubs.iter().collect::<Vec<_>>(), Duration::from_secs(10)).await;
    hubs[0].node.write(key("before", 1)).await.expect("write");

    let (h4_id, h4_addr) = (added_hub_id("h4"), free_udp());
    let h4 = start_as(dir.path(), &ca, "h4", h4_id, h4_addr, Role::Added).await;
    assert!(h4.node.hubs().is_empty(), "an added hub founds nothing of its own: {:?}", h4.node.hubs());
    // Through a follower: forwarded to the leader.
    let follower = hubs.iter().find(|h| h.node.id != leader).expect("follower");
    follower.node.change_hubs(HubChange::Add(h4_id, node_addr("h4", h4_addr))).await.expect("add h4");
    let voters: Vec<u64> = follower.node.hubs().iter().map(|h| h.0).collect();
    assert_eq!(voters, vec![1, 2, 3, h4_id]);
    assert!(
        h4.node.read(|a| a.state.key_by_name("before").is_some()).await.expect("read on h4"),
        "the new hub has the state"
    );
    assert!(
        follower.node.change_hubs(HubChange::Add(h4_id, node_addr("h4", h4_addr))).await.is_ok(),
        "adding it again changes nothing"
    );

    follower.node.change_hubs(HubChange::Remove(leader)).await.expect("remove the leader");
    let old = hubs.remove(hubs.iter().position(|h| h.node.id == leader).expect("leader"));
    stop(&old).await;
    h4.node.write(key("after-removal", 2)).await.expect("write after removing the leader");
    let names: Vec<String> = h4.node.hubs().into_iter().map(|h| h.1).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&"h4".to_string()) && !names.contains(&format!("h{leader}")), "{names:?}");

    // Three voters: the new hub and one founder are a majority.
    stop(&hubs[0]).await;
    h4.node.write(key("two-of-three", 3)).await.expect("h4 votes");
    assert!(hubs[1].node.read(|a| a.state.key_by_name("two-of-three").is_some()).await.expect("read"));
    let refused = hubs[1].node.change_hubs(HubChange::Remove(leader)).await;
    assert!(refused.is_err(), "a hub that no longer votes cannot be removed again: {refused:?}");
    stop(&hubs[1]).await;
    stop(&h4).await;
}

/// A hub that was down while the leader snapshotted and purged its log catches up by
/// installing the snapshot; so does a learner (a spoke's replica) added afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_hub_and_a_new_learner_catch_up_from_a_snapshot() {
    let (dir, ca, voters, mut hubs) = three_hubs().await;
    let leader_id = leader_among(&hubs.iter().collect::<Vec<_>>(), Duration::from_secs(10)).await;
    let lagging = hubs.iter().position(|h| h.node.id != leader_id).expect("a follower");
    let lagging = hubs.remove(lagging);
    let lagging_id = lagging.node.id;
    stop(&lagging).await;
    drop(lagging);

    // Writes the stopped hub misses; then the leader snapshots and purges its log.
    let leader = hubs.iter().find(|h| h.node.id == leader_id).expect("leader").node.clone();
    for i in 0..40u8 {
        leader.write(key(&format!("missed-{i}"), i)).await.expect("write");
    }
    leader.raft.trigger().snapshot().await.expect("snapshot");
    let snap = leader
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some_and(|s| s.index >= 40), "a snapshot")
        .await
        .expect("snapshot built");
    let upto = snap.snapshot.expect("snapshot").index;
    leader.raft.trigger().purge_log(upto).await.expect("purge");
    leader
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= upto), "the log purged")
        .await
        .expect("purged");

    // The stopped hub comes back: the entries it lacks are gone from the leader's log, so
    // it gets the snapshot.
    let back = start(dir.path(), &ca, lagging_id, &voters).await;
    let installed = back
        .node
        .raft
        .wait(Some(Duration::from_secs(20)))
        .metrics(|m| m.snapshot.is_some_and(|s| s.index >= upto), "snapshot installed")
        .await;
    assert!(installed.is_ok(), "the lagging hub installed the leader's snapshot");
    assert!(
        back.node
            .read(|a| (0..40u8).all(|i| a.state.key_by_name(&format!("missed-{i}")).is_some()))
            .await
            .expect("read"),
        "the lagging hub has every key"
    );

    // A learner added now (a spoke's replica): it catches up the same way and never votes.
    let name = "s-learner";
    let identity =
        ca.ensure_node(&dir.path().join(name), name, std::time::Duration::from_secs(30 * 86400)).expect("identity");
    let endpoint = tls::endpoint(&identity, free_udp(), &[tls::ALPN_RAFT]).expect("endpoint");
    let lid = nave_consensus::node::learner_id(name);
    let learner =
        ConsensusNode::start_learner(&dir.path().join(name), lid, endpoint.clone(), &identity).await.expect("learner");
    serve(&endpoint, &learner);
    let want: BTreeMap<u64, openraft::BasicNode> =
        [(lid, node_addr(name, endpoint.local_addr().expect("addr")))].into();
    leader.ensure_learners(&want).await.expect("learner added");
    let last = leader.raft.metrics().borrow().last_log_index;
    learner
        .raft
        .wait(Some(Duration::from_secs(20)))
        .metrics(|m| m.last_applied.map(|l| l.index) >= last, "the learner caught up")
        .await
        .expect("caught up");
    assert!(
        learner.state.read(|a| (0..40u8).all(|i| a.state.key_by_name(&format!("missed-{i}")).is_some())),
        "the replica has every key"
    );
    let m = leader.raft.metrics().borrow().clone();
    assert!(!m.membership_config.membership().voter_ids().any(|v| v == lid), "a learner never votes");
    // Removed from the wanted set, it leaves the membership.
    leader.ensure_learners(&BTreeMap::new()).await.expect("learner removed");
    assert!(!leader.raft.metrics().borrow().membership_config.membership().nodes().any(|(id, _)| *id == lid));

    let _ = tokio::time::timeout(Duration::from_secs(5), learner.shutdown()).await;
    endpoint.close(0u32.into(), b"stop");
    stop(&back).await;
    for h in &hubs {
        stop(h).await;
    }
}

/// A leader whose followers are gone answers "no quorum" within the wait, for writes and
/// reads alike (openraft alone would keep the proposal waiting for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_quorum_answers_instead_of_hanging() {
    let (_dir, _ca, _voters, hubs) = three_hubs().await;
    let leader = leader_among(&hubs.iter().collect::<Vec<_>>(), Duration::from_secs(10)).await;
    let leader = hubs.iter().find(|h| h.node.id == leader).expect("leader");
    leader.node.write(key("before", 1)).await.expect("write with quorum");
    for h in hubs.iter().filter(|h| h.node.id != leader.node.id) {
        stop(h).await;
    }
    let t = Instant::now();
    let write = tokio::time::timeout(Duration::from_secs(30), leader.node.write(key("lost", 2)))
        .await
        .expect("the write answers");
    assert!(matches!(write, Err(nave_consensus::Error::NoQuorum(_))), "{write:?}");
    let read = tokio::time::timeout(Duration::from_secs(30), leader.node.read(|a| a.state.keys.len()))
        .await
        .expect("the read answers");
    assert!(matches!(read, Err(nave_consensus::Error::NoQuorum(_))), "{read:?}");
    assert!(t.elapsed() < Duration::from_secs(15), "answered after {:?}", t.elapsed());
    stop(leader).await;
}

/// Committed writes per second and commit latency with 1, 16 and 64 concurrent writers on
/// three hubs with sled and fsync. A benchmark, not a test: `cargo test --release -p
/// nave-consensus --test cluster -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn write_throughput() {
    let (_dir, _ca, _voters, hubs) = three_hubs().await;
    leader_among(&hubs.iter().collect::<Vec<_>>(), Duration::from_secs(10)).await;
    let mut n = 0u64;
    for writers in [1usize, 16, 64] {
        let started = Instant::now();
        let per_writer = if writers == 1 { 3000 } else { 12_000 / writers };
        let mut tasks = Vec::new();
        for w in 0..writers {
            let node = hubs[w % 3].node.clone();
            let base = n + (w * per_writer) as u64;
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_writer);
                for i in 0..per_writer as u64 {
                    let t = Instant::now();
                    node.write(Command::Audit { actor: "test".into(), what: format!("w{}", base + i) })
                        .await
                        .expect("write");
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.expect("task"));
        }
        n += (writers * per_writer) as u64;
        let secs = started.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
        println!(
            "writers {writers:>3}: {:>7.0} writes/s, p50 {:.2} ms, p99 {:.2} ms ({} writes, spread over 3 hubs)",
            lat.len() as f64 / secs,
            p(0.5),
            p(0.99),
            lat.len()
        );
    }
    for h in &hubs {
        stop(h).await;
    }
}

/// Waits until every hub names the same leader and has applied all of its log: a
/// restarted hub has caught up.
async fn settled(hubs: &[&Hub], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let leader = leader_among(hubs, deadline.saturating_duration_since(Instant::now())).await;
        let f: Vec<_> = hubs.iter().map(|h| h.node.figures()).collect();
        let last = f.iter().find(|x| x.id == leader).and_then(|x| x.last_log_index);
        if f.iter().all(|x| x.leader == Some(leader) && x.applied_index == last) {
            return;
        }
        assert!(Instant::now() < deadline, "the hubs did not settle within {timeout:?}: {f:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Leader failover time: kill the leader, time until a surviving hub acknowledges a
/// write; 20 rounds, the killed hub restarted and caught up between them.
/// `cargo test --release -p nave-consensus --test cluster failover_time -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn failover_time() {
    // RUST_LOG=info,openraft=info shows each election.
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    let (dir, ca, voters, started) = three_hubs().await;
    let mut hubs: BTreeMap<u64, Hub> = started.into_iter().map(|h| (h.node.id, h)).collect();
    let mut times = Vec::new();
    for round in 0..20 {
        settled(&hubs.values().collect::<Vec<_>>(), Duration::from_secs(20)).await;
        let leader = leader_among(&hubs.values().collect::<Vec<_>>(), Duration::from_secs(10)).await;
        let survivor = hubs.values().find(|h| h.node.id != leader).expect("survivor").node.clone();
        survivor.write(key(&format!("before-{round}"), 0)).await.expect("write");
        let old = hubs.remove(&leader).expect("leader");
        // Close the endpoint first: from that instant the leader is gone for its peers.
        old.endpoint.close(0u32.into(), b"killed");
        let killed = Instant::now();
        tracing::info!("killed leader {leader} (round {round})");
        survivor.write(key(&format!("after-{round}"), 0)).await.expect("write after failover");
        times.push(killed.elapsed());
        tracing::info!("failover {round} took {:?}", killed.elapsed());
        old.node.shutdown().await;
        old.endpoint.wait_idle().await;
        drop(old);
        hubs.insert(leader, start(dir.path(), &ca, leader, &voters).await);
    }
    times.sort();
    let ms: Vec<u128> = times.iter().map(|t| t.as_millis()).collect();
    println!("failover (kill -> first acknowledged write), ms: {ms:?}");
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!("p50 {:?}, p99 {:?}, max {:?}", p(0.5), p(0.99), times[times.len() - 1]);
}
