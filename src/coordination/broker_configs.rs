//! Dynamic broker configs: the broker settings that AlterConfigs / IncrementalAlterConfigs may
//! change at run time, for one broker or as the cluster-wide default, as Kafka's
//! `DynamicBrokerConfig` allows them. They live in `ClusterState::broker_configs` (so every
//! broker agrees and they survive restarts); each shard reads the effective value from its
//! metadata snapshot (`Shard::dynamic_config`).
//!
//! Precedence, most specific first, as Kafka's: the broker's own dynamic value
//! (DYNAMIC_BROKER_CONFIG), the cluster default (DYNAMIC_DEFAULT_BROKER_CONFIG), the
//! properties file or flag (STATIC_BROKER_CONFIG), the built-in default (DEFAULT_CONFIG).

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;

use super::state_machine::{validate_topic_config, ClusterState, ConfigChange, Outcome};

/// (broker key, the topic config it is the default of, if any) of the dynamic broker configs.
pub const DYNAMIC_BROKER_CONFIGS: &[(&str, Option<&str>)] = &[
    ("log.retention.ms", Some("retention.ms")),
    ("log.retention.bytes", Some("retention.bytes")),
    ("log.segment.bytes", Some("segment.bytes")),
    ("message.max.bytes", Some("max.message.bytes")),
    ("min.insync.replicas", Some("min.insync.replicas")),
    ("max.connections", None),
];

/// Whether `key` may change at run time.
pub fn is_dynamic(key: &str) -> bool {
    DYNAMIC_BROKER_CONFIGS.iter().any(|(k, _)| *k == key)
}

/// Checks (and normalises) a dynamic broker config value with the rules of the topic config
/// it is the default of; the error is INVALID_CONFIG's message.
pub fn validate_broker_config(key: &str, value: &str) -> Result<String, String> {
    let Some((_, topic_key)) = DYNAMIC_BROKER_CONFIGS.iter().find(|(k, _)| *k == key) else {
        return Err(format!(
            "Cannot update these configs dynamically: Set({key})"
        ));
    };
    let Some(topic_key) = topic_key else {
        // max.connections: an INT, at least 0.
        return match value.trim().parse::<i32>() {
            Ok(v) if v >= 0 => Ok(v.to_string()),
            Ok(_) => Err(format!(
                "Invalid value {value} for configuration {key}: Value must be at least 0"
            )),
            Err(_) => Err(format!(
                "Invalid value {value} for configuration {key}: Not a number of type INT"
            )),
        };
    };
    validate_topic_config(topic_key, value).map_err(|m| {
        m.replace(
            &format!("configuration {topic_key}"),
            &format!("configuration {key}"),
        )
    })
}

/// The key of a broker's entry in `ClusterState::broker_configs` (`""`: the cluster default).
pub fn entity_key(broker: Option<i32>) -> String {
    broker.map(|b| b.to_string()).unwrap_or_default()
}

/// The dynamic configs of `broker` after `changes`, or why they are refused (as a whole).
pub fn altered(
    state: &ClusterState,
    broker: Option<i32>,
    replace: bool,
    changes: &[ConfigChange],
) -> Result<BTreeMap<String, String>, Outcome> {
    if broker.is_some_and(|b| b < 0) {
        return Err(Outcome::refused(
            ResponseError::InvalidRequest,
            "broker ids are not negative",
        ));
    }
    let mut configs = if replace {
        BTreeMap::new()
    } else {
        state
            .broker_configs
            .get(&entity_key(broker))
            .cloned()
            .unwrap_or_default()
    };
    let read_only: Vec<&str> = changes
        .iter()
        .map(|c| match c {
            ConfigChange::Set { key, .. }
            | ConfigChange::Delete { key }
            | ConfigChange::Append { key, .. }
            | ConfigChange::Subtract { key, .. } => key.as_str(),
        })
        .filter(|key| !is_dynamic(key))
        .collect();
    if !read_only.is_empty() {
        // Kafka's answer for static (read-only) broker configs.
        return Err(Outcome::refused(
            ResponseError::InvalidRequest,
            format!(
                "Cannot update these configs dynamically: Set({})",
                read_only.join(", ")
            ),
        ));
    }
    for change in changes {
        match change {
            ConfigChange::Set { key, value } => {
                let value = validate_broker_config(key, value)
                    .map_err(|m| Outcome::refused(ResponseError::InvalidConfig, m))?;
                configs.insert(key.clone(), value);
            }
            ConfigChange::Delete { key } => {
                configs.remove(key);
            }
            ConfigChange::Append { key, .. } | ConfigChange::Subtract { key, .. } => {
                return Err(Outcome::refused(
                    ResponseError::InvalidConfig,
                    format!("Config value append/subtract is not allowed for config key: {key}"),
                ))
            }
        }
    }
    Ok(configs)
}

#[cfg(test)]
mod tests {
    use super::super::state_machine::Command;
    use super::*;

    fn set(key: &str, value: &str) -> ConfigChange {
        ConfigChange::Set {
            key: key.into(),
            value: value.into(),
        }
    }

    fn alter(broker: Option<i32>, changes: Vec<ConfigChange>) -> Command {
        Command::AlterBrokerConfigs {
            broker,
            replace: false,
            changes,
        }
    }

    #[test]
    fn dynamic_broker_configs_are_validated_and_kept_per_broker_and_default() {
        let mut state = ClusterState::default();
        assert_eq!(
            state.apply(alter(Some(1), vec![set("log.retention.ms", "60000")])),
            Outcome::Done
        );
        assert_eq!(
            state.apply(alter(None, vec![set("message.max.bytes", "2000")])),
            Outcome::Done
        );
        assert_eq!(state.broker_configs["1"]["log.retention.ms"], "60000");
        assert_eq!(state.broker_configs[""]["message.max.bytes"], "2000");
        let Outcome::Refused { code, message } =
            state.apply(alter(Some(1), vec![set("broker.id", "3")]))
        else {
            panic!("a static config was changed");
        };
        assert_eq!(code, ResponseError::InvalidRequest);
        assert_eq!(
            message,
            "Cannot update these configs dynamically: Set(broker.id)"
        );
        let Outcome::Refused { code, message } =
            state.apply(alter(Some(1), vec![set("log.retention.bytes", "x")]))
        else {
            panic!("a bad value was accepted");
        };
        assert_eq!(code, ResponseError::InvalidConfig);
        assert!(message.contains("log.retention.bytes"), "{message}");
        assert_eq!(
            state.apply(alter(
                Some(1),
                vec![ConfigChange::Delete {
                    key: "log.retention.ms".into()
                }]
            )),
            Outcome::Done
        );
        assert!(!state.broker_configs.contains_key("1"), "empty entries go");
    }
}
