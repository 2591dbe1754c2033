//! `brokerctl configs`: kafka-configs.sh for topics and brokers.

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::*;

use crate::client::{error_text, s, Conn, Result};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    bootstrap_server: String,
    #[arg(long, group = "action")]
    describe: bool,
    #[arg(long, group = "action")]
    alter: bool,
    /// `topics` or `brokers`.
    #[arg(long)]
    entity_type: String,
    /// A topic name or broker id.
    #[arg(long, required_unless_present = "entity_default")]
    entity_name: Option<String>,
    /// The cluster-wide default of broker configs (with `--entity-type brokers`).
    #[arg(long, conflicts_with = "entity_name")]
    entity_default: bool,
    /// `k=v[,k=v...]` to set (with --alter).
    #[arg(long)]
    add_config: Option<String>,
    /// `k[,k...]` to remove (with --alter).
    #[arg(long)]
    delete_config: Option<String>,
    /// With --describe: every config, not only the overridden ones.
    #[arg(long)]
    all: bool,
}

fn resource_type(entity_type: &str) -> Result<i8> {
    match entity_type {
        "topics" => Ok(2),
        "brokers" => Ok(4),
        other => Err(format!(
            "--entity-type must be topics or brokers, not {other:?}"
        )),
    }
}

pub fn run(args: Args) -> Result<()> {
    let kind = resource_type(&args.entity_type)?;
    if args.entity_default && kind != 4 {
        return Err("--entity-default is for --entity-type brokers".into());
    }
    // The cluster default of broker configs is the resource named "".
    let entity_name = args.entity_name.clone().unwrap_or_default();
    let mut conn = Conn::connect(&args.bootstrap_server)?;
    if args.describe {
        let mut resource = DescribeConfigsResource::default();
        resource.resource_type = kind;
        resource.resource_name = s(entity_name.clone());
        resource.configuration_keys = None; // all of them
        let mut request = DescribeConfigsRequest::default();
        request.resources = vec![resource];
        let response = conn.call(4, &request)?;
        let result = response.results.first().ok_or("empty response")?;
        if result.error_code != 0 {
            return Err(error_text(result.error_code, result.error_message.as_ref()));
        }
        let what = match (kind, args.entity_default) {
            (2, _) => format!("topic {entity_name}"),
            (_, true) => "the default broker".to_string(),
            _ => format!("broker {entity_name}"),
        };
        // Kafka's: a topic's overrides; a broker's dynamic configs (2: DYNAMIC_BROKER_CONFIG,
        // 3: DYNAMIC_DEFAULT_BROKER_CONFIG); everything with --all.
        let shown = |source: i8| match kind {
            2 => source != 5,
            _ => source == 2 || source == 3,
        };
        let label = if args.all { "All" } else { "Dynamic" };
        if kind == 2 {
            println!("Configs for {what} are:");
        } else {
            println!("{label} configs for {what} are:");
        }
        let mut configs: Vec<_> = result
            .configs
            .iter()
            .filter(|c| args.all || shown(c.config_source))
            .collect();
        configs.sort_by(|a, b| a.name.cmp(&b.name));
        for c in configs {
            let value = if c.is_sensitive {
                "(sensitive)".to_string()
            } else {
                c.value.as_ref().map(|v| v.to_string()).unwrap_or_default()
            };
            println!("  {}={}", c.name, value);
        }
        Ok(())
    } else if args.alter {
        let mut configs = Vec::new();
        for pair in args.add_config.iter().flat_map(|a| a.split(',')) {
            let (k, v) = crate::key_value(pair)?;
            let mut c = AlterableConfig::default();
            c.name = s(k);
            c.config_operation = 0; // SET
            c.value = Some(s(v));
            configs.push(c);
        }
        for key in args.delete_config.iter().flat_map(|d| d.split(',')) {
            let mut c = AlterableConfig::default();
            c.name = s(key.trim());
            c.config_operation = 1; // DELETE
            configs.push(c);
        }
        if configs.is_empty() {
            return Err("--alter needs --add-config or --delete-config".into());
        }
        let mut resource = AlterConfigsResource::default();
        resource.resource_type = kind;
        resource.resource_name = s(entity_name.clone());
        resource.configs = configs;
        let mut request = IncrementalAlterConfigsRequest::default();
        request.resources = vec![resource];
        let response = conn.call(1, &request)?;
        let result = response.responses.first().ok_or("empty response")?;
        if result.error_code != 0 {
            return Err(error_text(result.error_code, result.error_message.as_ref()));
        }
        if args.entity_default {
            println!("Completed updating default config for brokers in the cluster.");
        } else {
            println!(
                "Completed updating config for {} {entity_name}.",
                args.entity_type.trim_end_matches('s'),
            );
        }
        Ok(())
    } else {
        Err("one of --describe, --alter is required".into())
    }
}
