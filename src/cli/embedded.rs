//! The embedded broker for runs that name no target.

use squall_agent::mqtt::transport::TargetUrl;
use squall_controller::scenario::Plan;

/// Starts the embedded broker on a free loopback port.
pub async fn start(_plan: &Plan) -> Result<(TargetUrl, ()), String> {
    Err("the embedded broker is not built yet".into())
}
