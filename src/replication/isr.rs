//! ISR changes: a leader proposes them to the coordination quorum (Kafka's AlterPartition),
//! naming the leader and partition epochs it read, so a fenced or stale leader's change is
//! refused. The committed ISR comes back with the next metadata snapshot.

use std::rc::Rc;
use std::time::Duration;

use crate::coordination::{Command, Outcome};
use crate::replication::leader::IsrChange;
use crate::shard::partition::Partition;
use crate::shard::{now_ms, Shard};

const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Proposes `change` for `partition` in the background.
pub fn propose(shard: &Rc<Shard>, partition: &Rc<Partition>, change: IsrChange) {
    let command = Command::AlterPartition {
        topic: partition.topic.clone(),
        partition: partition.index,
        leader: shard.broker.node_id,
        leader_epoch: partition.leader_epoch.get(),
        partition_epoch: partition.partition_epoch(),
        isr: change.isr.clone(),
    };
    tracing::info!(
        topic = %partition.topic,
        partition = partition.index,
        from = ?partition.isr(),
        to = ?change.isr,
        "proposing an ISR change"
    );
    let shard = shard.clone();
    let partition = partition.clone();
    glommio::spawn_local(async move {
        let outcome = shard
            .invoke_on(0, move |coordinator_shard| async move {
                let coordinator = coordinator_shard
                    .coordinator
                    .as_ref()
                    .expect("the coordinator lives on shard 0");
                coordinator.propose(command, PROPOSE_TIMEOUT).await
            })
            .await;
        match outcome {
            // The new ISR arrives with the metadata snapshot that follows the commit.
            Ok(Outcome::Done) => {}
            Ok(Outcome::Refused { code, message }) => {
                tracing::info!(topic = %partition.topic, partition = partition.index, ?code, %message, "ISR change refused");
                partition.isr_change_failed();
            }
            Ok(other) => {
                tracing::error!(?other, "unexpected outcome of an ISR change");
                partition.isr_change_failed();
            }
            Err(e) => {
                tracing::warn!(topic = %partition.topic, partition = partition.index, error = %e.message, "ISR change not committed");
                partition.isr_change_failed();
            }
        }
    })
    .detach();
}

/// Periodically drops lagging followers from the ISR of the partitions this shard leads
/// (and adds caught-up ones that fetch rarely).
pub async fn maintain(shard: Rc<Shard>) {
    let lag_time_max_ms = shard.config.replication.lag_time_max_ms as i64;
    // Kafka checks at half the lag time; a floor keeps tiny test settings from spinning.
    let every = Duration::from_millis((lag_time_max_ms as u64 / 2).clamp(50, 5_000));
    while !shard.is_shutting_down() {
        glommio::timer::sleep(every).await;
        let metadata = shard.metadata();
        let now = now_ms();
        for partition in shard.owned_partitions() {
            let change = partition
                .isr_change_due(now, lag_time_max_ms, |node| metadata.broker(node).is_some());
            if let Some(change) = change {
                propose(&shard, &partition, change);
            }
        }
    }
}
