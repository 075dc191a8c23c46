//! The embedded broker for runs that name no target.

use squall_broker::{Broker, BrokerConfig};
use squall_controller::scenario::Plan;
use squall_proto::target::TargetUrl;

/// Starts the embedded broker on a free loopback port, sized for the plan.
pub async fn start(plan: &Plan) -> Result<(TargetUrl, Broker), String> {
    let config = BrokerConfig {
        // room for every client, with a margin for reconnects overlapping their old connections
        max_connections: (plan.clients() as usize).saturating_mul(2).max(1024),
        ..BrokerConfig::default()
    };
    let broker = Broker::start(config).await.map_err(|e| e.to_string())?;
    let addr = broker.local_addr();
    let url = TargetUrl::tcp(addr.ip().to_string(), addr.port());
    Ok((url, broker))
}

/// The broker's counters as flat report entries (`messages_in_qos1`, `dropped_queue_full` …).
pub fn counters(s: &squall_broker::StatsSnapshot) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    if let Ok(serde_json::Value::Object(o)) = serde_json::to_value(s) {
        for (k, v) in o {
            match v {
                serde_json::Value::Number(n) => {
                    m.insert(k, n.as_u64().unwrap_or(0));
                }
                serde_json::Value::Array(a) => {
                    for (q, n) in a.iter().enumerate() {
                        m.insert(format!("{k}_qos{q}"), n.as_u64().unwrap_or(0));
                    }
                }
                _ => {}
            }
        }
    }
    m
}
