//! Postgres least privilege as the testkit (and so `just up`) sets it up:
//! each service's login role reaches its own database and no other, and
//! every login needs its password.

use shop_testkit::Postgres;
use sqlx::Connection as _;

fn code(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn a_service_role_reaches_its_own_database_and_no_other() {
    let pg = Postgres::start().await.unwrap();
    let _orders = pg
        .create_service_database("shop_orders", "orders")
        .await
        .unwrap();
    let payments = pg
        .create_service_database("shop_payments", "payments")
        .await
        .unwrap();

    // Its own database: it owns it, so its migrations can create tables.
    let mut own = sqlx::PgConnection::connect(&payments).await.unwrap();
    sqlx::query("CREATE TABLE payments_probe (id int PRIMARY KEY)")
        .execute(&mut own)
        .await
        .unwrap();
    // It cannot make itself more than it is.
    let err = sqlx::query("CREATE ROLE intruder LOGIN")
        .execute(&mut own)
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("42501"), "{err}");
    let err = sqlx::query("CREATE DATABASE another")
        .execute(&mut own)
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("42501"), "{err}");
    own.close().await.unwrap();

    // payments' credentials on orders' database: refused by the server
    // (insufficient_privilege: CONNECT is revoked from PUBLIC).
    let cross = payments.replace("/shop_payments", "/shop_orders");
    let err = sqlx::PgConnection::connect(&cross).await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("42501"), "{err}");
    // Nor the maintenance database, to list or reach the others from there.
    let err = sqlx::PgConnection::connect(&payments.replace("/shop_payments", "/postgres"))
        .await
        .unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("42501"), "{err}");

    // A wrong password is refused (invalid_password), even for the role's
    // own database: there is no trust authentication.
    let (head, tail) = payments.split_once('@').unwrap();
    let (user, _) = head.rsplit_once(':').unwrap();
    let wrong = format!("{user}:not-the-password@{tail}");
    let err = sqlx::PgConnection::connect(&wrong).await.unwrap_err();
    assert_eq!(code(&err).as_deref(), Some("28P01"), "{err}");
}

#[tokio::test]
async fn connections_can_insist_on_tls_and_verify_the_server() {
    use shop_identity::mint::{Authority, Leaf};
    let pg = Postgres::start().await.unwrap();
    let pki = tempfile::tempdir().unwrap();
    let ca = Authority::generate("shop.test").unwrap();
    let server = pki.path().join("postgres");
    let id = shop_identity::SpiffeId::workload("shop.test", "shop", "postgres").unwrap();
    ca.write(
        &server,
        &id,
        &Leaf::local(std::time::Duration::from_secs(3600)),
    )
    .unwrap();
    pg.enable_tls(&server).await.unwrap();
    let url = pg
        .create_service_database("shop_payments", "payments")
        .await
        .unwrap();

    // verify-full with the bundle: TLS, and the server says so.
    let bundle = server.join("ca.crt");
    let secure = format!("{url}?{}", Postgres::tls_params(&bundle));
    let mut conn = sqlx::PgConnection::connect(&secure).await.unwrap();
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(ssl, "the connection is TLS");
    conn.close().await.unwrap();

    // A bundle the server's certificate does not chain to: refused by the
    // client before it logs in.
    let foreign = pki.path().join("foreign");
    Authority::generate("shop.test")
        .unwrap()
        .write(
            &foreign,
            &id,
            &Leaf::local(std::time::Duration::from_secs(3600)),
        )
        .unwrap();
    let wrong = format!("{url}?{}", Postgres::tls_params(&foreign.join("ca.crt")));
    let err = sqlx::PgConnection::connect(&wrong).await.unwrap_err();
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
}
