//! NATS least privilege, enforced by a real nats-server configured as the
//! testkit (and so `just up`) configures it: a service's credentials
//! publish its own events and set up what it reads; a forged event on
//! another service's subject is refused by the server, not by our code.

use secrecy::SecretString;
use shop_events::settings::{ConsumerSettings, EventsSettings, RelaySettings};
use shop_events::{DomainEvent as _, Events, catalog};
use shop_proto::shop::events::v1::{PaymentCaptured, StockReserved};
use shop_testkit::nats::ADMIN;
use shop_testkit::{Nats, eventually};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn settings(nats: &Nats, user: &str) -> EventsSettings {
    let (user, password) = nats.credentials(user).unwrap();
    EventsSettings {
        nats_url: nats.url(),
        nats_user: Some(user),
        nats_password: Some(SecretString::from(password)),
        connect_timeout: Duration::from_secs(10),
        duplicate_window: Duration::from_secs(120),
        relay: RelaySettings::default(),
        consumer: ConsumerSettings::default(),
    }
}

/// A raw connection with `user`'s credentials that records the errors the
/// server sends it.
async fn raw(nats: &Nats, user: &str) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let (user, password) = nats.credentials(user).unwrap();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user, password)
        .custom_inbox_prefix("_INBOX_inventory")
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await
        .unwrap();
    (client, errors)
}

async fn server_said(errors: &Arc<Mutex<Vec<String>>>, what: &str) {
    eventually(Duration::from_secs(5), || async {
        let errors = errors.lock().unwrap().clone();
        if errors.iter().any(|e| e.contains(what)) {
            Ok(())
        } else {
            Err(format!("server errors so far: {errors:?}"))
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn inventory_credentials_cannot_forge_a_payment_event() {
    let nats = Nats::start_for_services(&["inventory", "payments", "orders"])
        .await
        .unwrap();
    let admin = Events::connect("test", &settings(&nats, ADMIN))
        .await
        .unwrap();

    // inventory sets itself up under its own permissions (its stream, the
    // ORDERS stream it reads) and publishes its own events.
    let inventory = Events::connect("inventory", &settings(&nats, "inventory"))
        .await
        .expect("inventory's permissions cover its own set-up");
    inventory
        .publish_now(
            "order-1",
            &StockReserved {
                order_id: "order-1".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .expect("inventory publishes its own events");
    assert_eq!(admin.stream_message_count("INVENTORY").await.unwrap(), 1);

    // A PaymentCaptured published with inventory's credentials: the server
    // refuses it, and JetStream stores nothing.
    let (client, errors) = raw(&nats, "inventory").await;
    client
        .publish(PaymentCaptured::SUBJECT, "forged".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    server_said(
        &errors,
        "Permissions Violation for Publish to \"shop.payments.payment_captured\"",
    )
    .await;
    assert_eq!(admin.stream_message_count("PAYMENTS").await.unwrap(), 0);

    // Nor may it listen to payments' subjects or another service's inbox.
    let _sub = client.subscribe("shop.payments.>").await.unwrap();
    server_said(
        &errors,
        "Permissions Violation for Subscription to \"shop.payments.>\"",
    )
    .await;
    let _sub = client.subscribe("_INBOX_payments.>").await.unwrap();
    server_said(
        &errors,
        "Permissions Violation for Subscription to \"_INBOX_payments.>\"",
    )
    .await;

    // Nor ask JetStream about PAYMENTS: the server refuses the API call.
    client
        .publish(
            format!("$JS.API.STREAM.INFO.{}", catalog::PAYMENTS.name),
            "".into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    server_said(
        &errors,
        "Permissions Violation for Publish to \"$JS.API.STREAM.INFO.PAYMENTS\"",
    )
    .await;
}
