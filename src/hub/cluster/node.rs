//! What a node does in the background in cluster mode, as part of the hub's one task
//! ([`Hub::expiry_task`](super::super::Hub::expiry_task)):
//!
//! * **listen** on its channel `sy:node:ID` for events to write (`e`), takeovers (`s`), asks to
//!   hand a session's inbox over (`h`), changed rooms of a session whose inbox it holds (`r`)
//!   and answers to its requests (`a`), and hand them to the hub. While the subscription is down the node cannot hear of events
//!   emitted elsewhere, so it tells every attached client to resume (`reconnect`, reason
//!   `redis`) and refuses new attaches with 503 until it is back; it reconnects by itself.
//! * **renew** the inbox leases of the sessions whose handlers run (see `lease.rs`).
//! * **heartbeat**: renews `sy:alive:ID`, by which other nodes know it still holds its sessions
//!   (and where to reach it, `peers.rs`).
//! * **expire** the sessions whose deadline in `sy:expiry` passed, cluster-wide and once each.
//! * at **shutdown**, detach every session it holds in one go, so their grace periods start
//!   now rather than when the last socket closes.

use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::protocol::Sid;

use super::super::{Hub, Inner as HubInner};
use super::{array, int, millis, text, Cluster, NODE_LEASE};

/// The node's background work; ends at shutdown, after detaching what the node holds.
pub(in crate::hub) async fn run(hub: Weak<HubInner>, cluster: Cluster, shutdown: CancellationToken) {
    let work = async {
        tokio::join!(listen(hub.clone(), cluster.clone()), heartbeat(cluster.clone()), expire(hub.clone(), cluster.clone()), tickets(hub.clone(), cluster.clone()));
    };
    tokio::select! {
        () = work => {}
        () = shutdown.cancelled() => {}
    }
    if let Some(inner) = hub.upgrade() {
        // The hub's own shutdown (`close_all`, beside this in the expiry task) tells every
        // attachment to say goodbye; here they are detached in Redis.
        let hub = Hub { inner };
        let held = hub.held();
        let count = held.len();
        let detach = futures_util::stream::iter(held)
            .map(|(sid, gen, delivered)| {
                let hub = hub.clone();
                async move { hub.cluster_detach(&sid, gen, delivered).await }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>();
        if tokio::time::timeout(Duration::from_secs(5), detach).await.is_err() {
            tracing::warn!(count, "shutdown: Redis did not take every detach in time");
        } else {
            tracing::info!(count, "shutdown: sessions detached in Redis");
        }
    }
    cluster.set_reachable(false);
}

/// Subscribes to the node's channel and hands what arrives to the hub, reconnecting forever.
async fn listen(hub: Weak<HubInner>, cluster: Cluster) {
    let mut pause = Duration::from_millis(100);
    let mut server = 0;
    loop {
        let channel = format!("sy:node:{}", cluster.node());
        let client = &cluster.inner.subscribe_to[server % cluster.inner.subscribe_to.len()];
        server += 1;
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(super::COMMAND_TIMEOUT, subscribed).await {
            Ok(Ok(pubsub)) => {
                pause = Duration::from_millis(100);
                // The command connection reconnects on its first failure after an outage:
                // reachable only once a command goes through, so that `/healthz` saying so
                // means requests are served.
                for _ in 0..50 {
                    if cluster.cmd("ping", &redis::cmd("PING")).await.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                cluster.set_reachable(true);
                tracing::info!(channel, "cluster mode: subscribed");
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Some(inner) = hub.upgrade() else { return };
                    Hub { inner }.on_message(message.get_payload_bytes());
                }
                tracing::warn!("cluster mode: lost the Redis subscription");
            }
            Ok(Err(err)) => tracing::warn!(%err, "cluster mode: cannot subscribe"),
            Err(_) => tracing::warn!("cluster mode: subscribing timed out"),
        }
        metrics::counter!("switchyard_redis_errors_total", "op" => "subscribe").increment(1);
        if cluster.is_reachable() {
            cluster.set_reachable(false);
            let Some(inner) = hub.upgrade() else { return };
            Hub { inner }.redis_lost();
            // Every transport of the node just ended, but Redis may still name the node as
            // their holder (their detaches failed): under a new id, the old one's sessions are
            // held by a node that is gone, and each gets its grace period when it comes due.
            cluster.renew_identity();
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Renews the leases of the inbox tickets the node holds while their handlers run (a handler
/// that runs long, an application slow to answer), three times per lease. A lease held between
/// events is not renewed: it runs out by itself unless the node's next event renews it.
async fn tickets(hub: Weak<HubInner>, cluster: Cluster) {
    let mut tick = tokio::time::interval(super::INBOX_LEASE / 3);
    loop {
        tick.tick().await;
        let Some(inner) = hub.upgrade() else { return };
        let busy = Hub { inner }.busy_leases();
        for (sid, ticket) in busy {
            let _ = cluster.renew(&sid, ticket).await;
        }
    }
}

/// Renews the node's liveness key.
async fn heartbeat(cluster: Cluster) {
    let mut tick = tokio::time::interval(NODE_LEASE / 5);
    loop {
        tick.tick().await;
        if !cluster.is_reachable() {
            continue;
        }
        let key = format!("sy:alive:{}", cluster.node());
        let _ = cluster.cmd("heartbeat", redis::cmd("SET").arg(&key).arg(cluster.liveness()).arg("PX").arg(millis(NODE_LEASE))).await;
    }
}

/// Takes the sessions whose deadline passed from the expiry index and settles each: expired
/// (removed, hooks run), still in its grace period (deadline put back), held by a live node
/// (checked again a grace period later), or held by a node that is gone (detached now).
async fn expire(hub: Weak<HubInner>, cluster: Cluster) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !cluster.is_reachable() {
            continue;
        }
        let Some(inner) = hub.upgrade() else { return };
        let hub = Hub { inner };
        let Ok(now) = cluster.redis_now_ms().await else { continue };
        let Ok(due) = cluster.cmd("expiry", redis::cmd("ZRANGEBYSCORE").arg("sy:expiry").arg("-inf").arg(now).arg("LIMIT").arg(0).arg(200)).await
        else {
            continue;
        };
        for sid in array(due).iter().map(text) {
            let Ok(sid) = sid.parse::<Sid>() else {
                let _ = cluster.cmd("expiry", redis::cmd("ZREM").arg("sy:expiry").arg(&sid)).await;
                continue;
            };
            // Whoever removes the entry settles the session: one node per deadline.
            let claimed = cluster.cmd("expiry", redis::cmd("ZREM").arg("sy:expiry").arg(sid.as_str())).await.map(|v| int(&v));
            if claimed != Ok(1) {
                continue;
            }
            settle(&hub, &cluster, &sid, now).await;
        }
    }
}

/// `now` is Redis's clock as of this tick.
async fn settle(hub: &Hub, cluster: &Cluster, sid: &Sid, now: u64) {
    let grace = hub.inner.config.grace;
    let mut invocation = cluster.inner.scripts.check.prepare_invoke();
    super::keys(&mut invocation, sid);
    invocation.arg(millis(grace));
    let Ok(reply) = cluster.run("expiry", &invocation).await else {
        // Put it back for another try.
        let _ = cluster.cmd("expiry", redis::cmd("ZADD").arg("sy:expiry").arg(0).arg(sid.as_str())).await;
        return;
    };
    let reply = array(reply);
    let verdict = reply.first().map(text).unwrap_or_default();
    match verdict.as_str() {
        "gone" => {
            let _ = cluster.cmd("expiry", redis::cmd("SREM").arg("sy:sessions").arg(sid.as_str())).await;
        }
        "wait" => {
            let deadline = reply.get(1).map_or(0, int);
            let _ = cluster.cmd("expiry", redis::cmd("ZADD").arg("sy:expiry").arg(deadline).arg(sid.as_str())).await;
        }
        "attached" => {
            let owner = reply.get(1).map(text).unwrap_or_default();
            let alive = cluster.cmd("expiry", redis::cmd("EXISTS").arg(format!("sy:alive:{owner}"))).await.map(|v| int(&v) == 1);
            if alive.unwrap_or(true) {
                // Held by a live node: look again a grace period later, keeping the keys alive.
                let mut touch = cluster.inner.scripts.touch.prepare_invoke();
                super::keys(&mut touch, sid);
                touch.arg(millis(hub.cluster_ttl()));
                let _ = cluster.run("expiry", &touch).await;
                let deadline = now + millis(hub.cluster_recheck());
                let _ = cluster.cmd("expiry", redis::cmd("ZADD").arg("sy:expiry").arg(deadline).arg(sid.as_str())).await;
            } else {
                let mut orphan = cluster.inner.scripts.orphan.prepare_invoke();
                super::keys(&mut orphan, sid);
                orphan.arg(&owner).arg(millis(grace)).arg(millis(hub.cluster_ttl()));
                let deadline = cluster.run("expiry", &orphan).await.map_or(0, |v| int(&v));
                let deadline = if deadline > 0 { deadline } else { i64::try_from(now).unwrap_or(0) };
                tracing::info!(sid = sid.short(), owner, "the node holding the session is gone; its grace period starts");
                let _ = cluster.cmd("expiry", redis::cmd("ZADD").arg("sy:expiry").arg(deadline).arg(sid.as_str())).await;
            }
        }
        "expired" => {
            let rooms: Vec<String> = reply.iter().skip(1).map(text).collect();
            for room in &rooms {
                cluster.forget_members(room, std::slice::from_ref(sid)).await;
            }
            let _ = cluster.cmd("expiry", redis::cmd("SREM").arg("sy:sessions").arg(sid.as_str())).await;
            metrics::counter!("switchyard_sessions_expired_total").increment(1);
            tracing::debug!(sid = sid.short(), "session expired cluster-wide");
            hub.expired_in_cluster(sid, rooms);
        }
        _ => {}
    }
}
