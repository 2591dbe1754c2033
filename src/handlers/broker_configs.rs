//! BROKER resources of DescribeConfigs, AlterConfigs and IncrementalAlterConfigs: the broker's
//! settings with Kafka's sources and synonyms, and the dynamic ones
//! (`coordination::broker_configs`) changed through the coordination quorum.
//!
//! A broker resource named by a broker id describes that broker's effective values (dynamic
//! for that broker, else the cluster default, else static); the resource `""` is the cluster
//! default and lists only the dynamic defaults set, as Kafka does.

use kafka_protocol::messages::describe_configs_response::DescribeConfigsResourceResult;
use kafka_protocol::ResponseError;

use super::admin::{config_entry, Described};
use crate::coordination::broker_configs::{self as dynamic, is_dynamic};
use crate::coordination::state_machine::{Command, ConfigChange};
use crate::coordination::Coordinator;
use crate::protocol::ApiError;
use crate::shard::Shard;

pub const CONFIG_SOURCE_DYNAMIC_BROKER: i8 = 2;
pub const CONFIG_SOURCE_DYNAMIC_DEFAULT_BROKER: i8 = 3;
pub const CONFIG_SOURCE_STATIC_BROKER: i8 = 4;

/// The dynamic synonyms of broker key `key` for this broker, most specific first:
/// (value, source) of its own dynamic value and of the cluster default.
pub fn dynamic_synonyms(shard: &Shard, key: &str) -> Vec<(String, i8)> {
    let snapshot = shard.metadata();
    let mut synonyms = Vec::new();
    let own = snapshot
        .broker_configs
        .get(&shard.broker.node_id.to_string())
        .and_then(|c| c.get(key));
    if let Some(v) = own {
        synonyms.push((v.clone(), CONFIG_SOURCE_DYNAMIC_BROKER));
    }
    if let Some(v) = snapshot.broker_configs.get("").and_then(|c| c.get(key)) {
        synonyms.push((v.clone(), CONFIG_SOURCE_DYNAMIC_DEFAULT_BROKER));
    }
    synonyms
}

/// Describes the broker resource `name` (this broker's id, or `""`), or why not.
pub fn describe(
    shard: &Shard,
    name: &str,
    statics: Vec<(&'static str, String, i8)>,
    wanted: impl Fn(&str) -> bool,
    version: i16,
    include_synonyms: bool,
) -> Result<Vec<DescribeConfigsResourceResult>, ApiError> {
    if name.is_empty() {
        let snapshot = shard.metadata();
        let defaults = snapshot.broker_configs.get("").cloned().unwrap_or_default();
        return Ok(statics
            .into_iter()
            .filter(|(key, ..)| wanted(key))
            .filter_map(|(key, _, ty)| {
                let value = defaults.get(key)?.clone();
                let source = CONFIG_SOURCE_DYNAMIC_DEFAULT_BROKER;
                let described = Described {
                    name: key,
                    value: value.clone(),
                    source,
                    config_type: ty,
                    read_only: false,
                    synonyms: vec![(key, value, source)],
                };
                Some(config_entry(version, include_synonyms, described))
            })
            .collect());
    }
    if name != shard.broker.node_id.to_string() {
        return Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!(
                "broker {} describes its own configs; this is broker {}",
                name, shard.broker.node_id
            ),
        ));
    }
    Ok(statics
        .into_iter()
        .filter(|(key, ..)| wanted(key))
        .map(|(key, static_value, ty)| {
            let mut synonyms: Vec<(&'static str, String, i8)> = dynamic_synonyms(shard, key)
                .into_iter()
                .map(|(v, source)| (key, v, source))
                .collect();
            synonyms.push((key, static_value, CONFIG_SOURCE_STATIC_BROKER));
            let (_, value, source) = synonyms[0].clone();
            let described = Described {
                name: key,
                value,
                source,
                config_type: ty,
                read_only: !is_dynamic(key),
                synonyms,
            };
            config_entry(version, include_synonyms, described)
        })
        .collect())
}

/// Alters the dynamic configs of broker resource `name` through the coordination quorum
/// (validate-only: checks them against the committed state). `static_message_max_bytes`: a
/// dynamic `message.max.bytes` above it is refused, since logs read their batches with the
/// static bound.
pub async fn alter(
    coordinator: &Coordinator,
    name: &str,
    changes: Vec<ConfigChange>,
    replace: bool,
    validate_only: bool,
    static_message_max_bytes: usize,
    timeout: std::time::Duration,
) -> Result<(), ApiError> {
    let broker = if name.is_empty() {
        None
    } else {
        match name.parse::<i32>() {
            Ok(id) if id >= 0 => Some(id),
            _ => {
                return Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    format!("Invalid broker id {name}"),
                ))
            }
        }
    };
    for change in &changes {
        if let ConfigChange::Set { key, value } = change {
            let raised = key == "message.max.bytes"
                && value
                    .trim()
                    .parse::<usize>()
                    .is_ok_and(|v| v > static_message_max_bytes);
            if raised {
                return Err(ApiError::new(
                    ResponseError::InvalidConfig,
                    format!(
                        "Invalid value {value} for configuration message.max.bytes: a dynamic \
                         value may not exceed the static {static_message_max_bytes} (logs read \
                         their batches with that bound)"
                    ),
                ));
            }
        }
    }
    if validate_only {
        return coordinator.check(|s| dynamic::altered(s, broker, replace, &changes).map(|_| ()));
    }
    coordinator
        .change(
            Command::AlterBrokerConfigs {
                broker,
                replace,
                changes,
            },
            timeout,
        )
        .await
        .map(|_| tracing::info!(broker = name, "altered dynamic broker configs"))
}
