//! NATS least privilege, enforced by a real nats-server configured as the
//! testkit (and so `just up`) configures it: a service's credentials
//! publish its own events and set up what it reads; a forged event on
//! another service's subject is refused by the server, not by our code.
//! The server speaks TLS only, as the stack runs it.

use secrecy::SecretString;
use shop_events::settings::{ConsumerSettings, EventsSettings, RelaySettings};
use shop_events::{DomainEvent as _, Events, catalog};
use shop_proto::shop::events::v1::{PaymentCaptured, StockReserved};
use shop_testkit::nats::ADMIN;
use shop_testkit::{Nats, eventually};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A CA, nats-server's identity and a client identity, in `dir`.
fn pki(dir: &Path) -> (PathBuf, PathBuf) {
    use shop_identity::mint::{Authority, Leaf};
    let ca = Authority::generate("shop.test").unwrap();
    let id = |sa| shop_identity::SpiffeId::workload("shop.test", "shop", sa).unwrap();
    let leaf = Leaf::local(Duration::from_secs(3600));
    let (server, client) = (dir.join("nats"), dir.join("inventory"));
    ca.write(&server, &id("nats"), &leaf).unwrap();
    ca.write(&client, &id("inventory"), &leaf).unwrap();
    (server, client)
}

fn settings(nats: &Nats, user: &str, tls: &Path) -> EventsSettings {
    let (user, password) = nats.credentials(user).unwrap();
    EventsSettings {
        nats_url: nats.url(),
        nats_user: Some(user),
        nats_password: Some(SecretString::from(password)),
        tls_dir: Some(tls.to_path_buf()),
        connect_timeout: Duration::from_secs(10),
        duplicate_window: Duration::from_secs(120),
        relay: RelaySettings::default(),
        consumer: ConsumerSettings::default(),
        streams: Default::default(),
        retention: Default::default(),
    }
}

/// A raw connection with `user`'s credentials that records the errors the
/// server sends it.
async fn raw(nats: &Nats, user: &str, tls: &Path) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let inbox = shop_events::permissions::inbox_prefix(user);
    let (user, password) = nats.credentials(user).unwrap();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::with_user_and_password(user, password)
        .require_tls(true)
        .add_root_certificates(tls.join("ca.crt"))
        .add_client_certificate(tls.join("tls.crt"), tls.join("tls.key"))
        .custom_inbox_prefix(inbox)
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
    let dir = tempfile::tempdir().unwrap();
    let (server, tls) = pki(dir.path());
    let nats = Nats::start_secure(&["inventory", "payments", "orders"], &server)
        .await
        .unwrap();
    let admin = Events::connect("test", &settings(&nats, ADMIN, &tls))
        .await
        .unwrap();

    // inventory sets itself up under its own permissions (its stream, the
    // ORDERS stream it reads) and publishes its own events.
    let inventory = Events::connect("inventory", &settings(&nats, "inventory", &tls))
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
    let (client, errors) = raw(&nats, "inventory", &tls).await;
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

#[tokio::test]
async fn the_server_speaks_tls_only() {
    use std::io::{BufRead as _, BufReader, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = pki(dir.path());
    let nats = Nats::start_secure(&["inventory"], &server).await.unwrap();
    let addr = nats.url().trim_start_matches("nats://").to_string();
    // A plaintext client: the server announces that TLS is required and
    // refuses the connection.
    let stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut info = String::new();
    reader.read_line(&mut info).unwrap();
    assert!(info.contains("\"tls_required\":true"), "{info}");
    let (user, password) = nats.credentials("inventory").unwrap();
    let mut writer = stream;
    let _ = writer.write_all(
        format!("CONNECT {{\"user\":\"{user}\",\"pass\":\"{password}\"}}\r\nPING\r\n").as_bytes(),
    );
    let mut answer = String::new();
    let _ = reader.read_line(&mut answer);
    assert!(
        !answer.starts_with("PONG"),
        "a plaintext client was let in: {answer:?}"
    );
}

#[tokio::test]
async fn notifications_credentials_cannot_pull_or_ack_payments_consumer() {
    use async_nats::jetstream::consumer::pull;
    let dir = tempfile::tempdir().unwrap();
    let (server, tls) = pki(dir.path());
    let nats = Nats::start_secure(&["orders", "payments", "notifications"], &server)
        .await
        .unwrap();
    let admin = Events::connect("test", &settings(&nats, ADMIN, &tls))
        .await
        .unwrap();
    // payments' consumer of ORDERS, made with payments' own credentials,
    // with an OrderCancelled waiting in it: a refund to make.
    let (payments, _) = raw(&nats, "payments", &tls).await;
    let payments_js = async_nats::jetstream::new(payments);
    let orders_stream = {
        let _orders = Events::connect("orders", &settings(&nats, "orders", &tls))
            .await
            .unwrap();
        payments_js.get_stream(catalog::ORDERS.name).await.unwrap()
    };
    let theirs = catalog::consumer_name("payments", &catalog::ORDERS);
    orders_stream
        .create_consumer(pull::Config {
            durable_name: Some(theirs.clone()),
            ..Default::default()
        })
        .await
        .expect("payments creates its own consumer");
    admin
        .publish_now(
            "order-1",
            &shop_proto::shop::events::v1::OrderCancelled {
                order_id: "order-1".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();

    // notifications reads ORDERS too, and sets up its own consumer...
    let (client, errors) = raw(&nats, "notifications", &tls).await;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(catalog::ORDERS.name).await.unwrap();
    stream
        .create_consumer(pull::Config {
            durable_name: Some(catalog::consumer_name("notifications", &catalog::ORDERS)),
            ..Default::default()
        })
        .await
        .expect("notifications creates its own consumer");

    // ...but every step towards payments' is refused by the server: read
    // it, re-create it with another filter, pull its next message, ack one
    // of its deliveries.
    for subject in [
        format!("$JS.API.CONSUMER.INFO.ORDERS.{theirs}"),
        format!("$JS.API.CONSUMER.CREATE.ORDERS.{theirs}"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.ORDERS.{theirs}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.ORDERS.{theirs}"),
        format!("$JS.ACK.ORDERS.{theirs}.1.1.1.1700000000000000000.0"),
    ] {
        client.publish(subject.clone(), "{}".into()).await.unwrap();
        client.flush().await.unwrap();
        server_said(
            &errors,
            &format!("Permissions Violation for Publish to \"{subject}\""),
        )
        .await;
    }
    // The OrderCancelled is still waiting for payments, undelivered.
    let info = payments_js
        .get_stream(catalog::ORDERS.name)
        .await
        .unwrap()
        .consumer_info(&theirs)
        .await
        .unwrap();
    assert_eq!(info.num_pending, 1, "{info:?}");
    assert_eq!(info.delivered.stream_sequence, 0, "{info:?}");
}
