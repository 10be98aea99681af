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
