//! The end users a benchmark drives: signed up and logged in through the
//! gateway, as a shopper would be.

use shop_proto::shop::gateway::v1 as gw;
use shop_proto::shop::gateway::v1::shop_gateway_service_client::ShopGatewayServiceClient;
use tonic::transport::Channel;

/// Every benchmark shopper's password.
pub const PASSWORD: &str = "correct horse battery";

/// `count` new accounts (emails `<label>-<uuid>@example.com`) signed up and
/// logged in through `gateway`: their access tokens. The gateway's
/// sign-up and log-in limits per address must allow `count` of each.
pub async fn logged_in(
    gateway: &mut ShopGatewayServiceClient<Channel>,
    count: usize,
    label: &str,
) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::with_capacity(count);
    for _ in 0..count {
        let email = format!("{label}-{}@example.com", uuid::Uuid::new_v4().simple());
        gateway
            .sign_up(gw::SignUpRequest {
                email: email.clone(),
                password: PASSWORD.into(),
                display_name: label.into(),
            })
            .await?;
        let token = gateway
            .log_in(gw::LogInRequest {
                email,
                password: PASSWORD.into(),
            })
            .await?
            .into_inner()
            .access_token;
        tokens.push(token);
    }
    Ok(tokens)
}
