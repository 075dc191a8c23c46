//! The embedded broker for runs that name no target.

use squall_agent::mqtt::transport::TargetUrl;
use squall_broker::{Broker, BrokerConfig};
use squall_controller::scenario::Plan;

/// Starts the embedded broker on a free loopback port, sized for the plan.
pub async fn start(plan: &Plan) -> Result<(TargetUrl, Broker), String> {
    let config = BrokerConfig {
        // room for every client, with a margin for reconnects overlapping their old connections
        max_connections: (plan.clients() as usize).saturating_mul(2).max(1024),
        ..BrokerConfig::default()
    };
    let broker = Broker::start(config).await.map_err(|e| e.to_string())?;
    let addr = broker.local_addr();
    let url = TargetUrl { tls: false, host: addr.ip().to_string(), port: addr.port() };
    Ok((url, broker))
}
