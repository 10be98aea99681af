//! The users API against a real Postgres: a fresh cluster and database per
//! test, the service served in process on port 0.

use shop_proto::shop::users::v1::user_service_client::UserServiceClient;
use shop_proto::shop::users::v1::{
    AuthenticateRequest, CreateUserRequest, DeactivateUserRequest, GetUserRequest,
    UpdateUserRequest, User, UserStatus,
};
use shop_testkit::inproc::RunningApp;
use shop_testkit::status::violated_fields;
use shop_testkit::{Nats, Postgres};
use tonic::Code;
use tonic::transport::Channel;

struct TestApp {
    client: UserServiceClient<Channel>,
    nats_url: String,
    db: sqlx::PgPool,
    /// The public half of the signing key (`k1`).
    public_pem: String,
    _keys: tempfile::TempDir,
    _app: RunningApp,
    _postgres: Postgres,
    _nats: Nats,
}

async fn spawn_app() -> TestApp {
    let postgres = Postgres::start().await.expect("postgres starts");
    let url = postgres.create_database("users").await.unwrap();
    let nats = Nats::start().await.expect("nats starts");
    let nats_url = nats.url();
    let keys = tempfile::tempdir().unwrap();
    let pair = shop_auth::KeyPair::generate();
    let key_file = keys.path().join("k1.pem");
    std::fs::write(&key_file, &pair.private_pem).unwrap();
    let key_file = key_file.display();
    let config: users::Config = shop_runtime::config::from_toml(&format!(
        r#"
        [server]
        listen = "127.0.0.1:0"
        [database]
        url = "{url}"
        [auth]
        signing_key_file = "{key_file}"
        token_ttl = "15m"
        [events]
        nats_url = "{nats_url}"
        "#
    ))
    .unwrap();
    let app = RunningApp::spawn(users::build(config).await.expect("users builds"));
    let client = UserServiceClient::connect(app.url()).await.unwrap();
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    TestApp {
        client,
        nats_url: nats.url(),
        db,
        public_pem: pair.public_pem,
        _keys: keys,
        _app: app,
        _postgres: postgres,
        _nats: nats,
    }
}

impl TestApp {
    async fn create(&mut self, email: &str, password: &str) -> Result<User, tonic::Status> {
        self.client
            .create_user(CreateUserRequest {
                email: email.into(),
                password: password.into(),
                display_name: "Ada Lovelace".into(),
            })
            .await
            .map(|r| r.into_inner().user.unwrap())
    }

    async fn user_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    async fn authenticate(&mut self, email: &str, password: &str) -> Result<String, tonic::Status> {
        self.client
            .authenticate(AuthenticateRequest {
                email: email.into(),
                password: password.into(),
            })
            .await
            .map(|r| r.into_inner().access_token)
    }
}

#[tokio::test]
async fn a_created_user_is_normalised_and_can_be_read_back() {
    let mut app = spawn_app().await;

    let created = app
        .create("  Ada@Example.COM ", "correct horse battery")
        .await
        .unwrap();
    let fetched = app
        .client
        .get_user(GetUserRequest {
            user_id: created.user_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();

    assert_eq!(created.email, "ada@example.com");
    assert_eq!(created.status, UserStatus::Active as i32);
    assert_eq!(fetched, created);
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$"), "stored as an argon2id hash");
    assert!(!hash.contains("correct horse"));
}

#[tokio::test]
async fn a_duplicate_email_is_already_exists_whatever_its_case() {
    let mut app = spawn_app().await;
    app.create("ada@example.com", "correct horse battery")
        .await
        .unwrap();

    let err = app
        .create("ADA@example.com", "another password")
        .await
        .unwrap_err();

    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(app.user_rows().await, 1);
}

#[tokio::test]
async fn bad_input_names_every_field_and_writes_nothing() {
    let mut app = spawn_app().await;

    let err = app
        .client
        .create_user(CreateUserRequest {
            email: "not-an-email".into(),
            password: "short".into(),
            display_name: " ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["email", "password", "display_name"]);

    let long = "x".repeat(129);
    let err = app.create("a@example.com", &long).await.unwrap_err();
    assert_eq!(violated_fields(&err), ["password"]);

    let err = app
        .client
        .get_user(GetUserRequest {
            user_id: "42".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["user_id"]);
    assert_eq!(app.user_rows().await, 0);
}

#[tokio::test]
async fn an_unknown_user_is_not_found() {
    let mut app = spawn_app().await;
    let id = uuid::Uuid::now_v7().to_string();

    let get = app
        .client
        .get_user(GetUserRequest {
            user_id: id.clone(),
        })
        .await
        .unwrap_err();
    let update = app
        .client
        .update_user(UpdateUserRequest {
            user_id: id.clone(),
            display_name: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let deactivate = app
        .client
        .deactivate_user(DeactivateUserRequest { user_id: id })
        .await
        .unwrap_err();

    assert_eq!(get.code(), Code::NotFound);
    assert_eq!(update.code(), Code::NotFound);
    assert_eq!(deactivate.code(), Code::NotFound);
}

#[tokio::test]
async fn update_changes_only_the_fields_given() {
    let mut app = spawn_app().await;
    let user = app
        .create("ada@example.com", "correct horse battery")
        .await
        .unwrap();
    app.create("grace@example.com", "correct horse battery")
        .await
        .unwrap();

    let renamed = app
        .client
        .update_user(UpdateUserRequest {
            user_id: user.user_id.clone(),
            display_name: Some("Countess".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(renamed.display_name, "Countess");
    assert_eq!(renamed.email, "ada@example.com");

    let taken = app
        .client
        .update_user(UpdateUserRequest {
            user_id: user.user_id.clone(),
            email: Some("Grace@example.com".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);

    let bad = app
        .client
        .update_user(UpdateUserRequest {
            user_id: user.user_id.clone(),
            email: Some("nope".into()),
            password: Some("short".into()),
            display_name: Some(String::new()),
            current_password: Some(String::new()),
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&bad),
        ["email", "display_name", "password", "current_password"]
    );

    // With current_password, nothing changes unless it is the password.
    let wrong = app
        .client
        .update_user(UpdateUserRequest {
            user_id: user.user_id.clone(),
            password: Some("a guessed new password".into()),
            current_password: Some("not the password".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&wrong), ["current_password"]);
    app.authenticate("ada@example.com", "correct horse battery")
        .await
        .expect("the password is unchanged");

    app.client
        .update_user(UpdateUserRequest {
            user_id: user.user_id.clone(),
            password: Some("a brand new password".into()),
            current_password: Some("correct horse battery".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        app.authenticate("ada@example.com", "correct horse battery")
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    app.authenticate("ada@example.com", "a brand new password")
        .await
        .unwrap();
}

#[tokio::test]
async fn authenticate_issues_a_signed_expiring_token() {
    let mut app = spawn_app().await;
    let user = app
        .create("ada@example.com", "correct horse battery")
        .await
        .unwrap();

    let response = app
        .client
        .authenticate(AuthenticateRequest {
            email: "ADA@example.com ".into(),
            password: "correct horse battery".into(),
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(response.user_id, user.user_id);
    assert_eq!(response.token_type, "Bearer");
    let header = jsonwebtoken::decode_header(&response.access_token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(
        header.kid.as_deref(),
        Some("k1"),
        "kid is the key file's name"
    );
    let verifier = shop_auth::Verifier::with_keys(
        [(
            "k1".to_string(),
            jsonwebtoken::DecodingKey::from_ed_pem(app.public_pem.as_bytes()).unwrap(),
        )]
        .into(),
        "shop-users",
        "shop-gateway",
        std::time::Duration::from_secs(30),
    );
    let claims = verifier
        .verify(&response.access_token)
        .expect("the token verifies with the public key alone")
        .claims;
    assert_eq!(claims.sub, user.user_id);
    let claims = serde_json::to_value(claims).unwrap();
    assert!(claims.get("email").is_none(), "no personal data in tokens");
    let ttl = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(ttl, 15 * 60);
    assert_eq!(
        response.expire_time.unwrap().seconds,
        claims["exp"].as_i64().unwrap()
    );
}

#[tokio::test]
async fn wrong_password_and_unknown_email_are_indistinguishable() {
    let mut app = spawn_app().await;
    app.create("ada@example.com", "correct horse battery")
        .await
        .unwrap();

    let wrong_password = app
        .authenticate("ada@example.com", "incorrect horse")
        .await
        .unwrap_err();
    let unknown_email = app
        .authenticate("nobody@example.com", "correct horse battery")
        .await
        .unwrap_err();
    let malformed_email = app
        .authenticate("nobody", "correct horse battery")
        .await
        .unwrap_err();

    for status in [&wrong_password, &unknown_email, &malformed_email] {
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), wrong_password.message());
    }
}

#[tokio::test]
async fn a_deactivated_user_cannot_authenticate_and_deactivation_is_idempotent() {
    let mut app = spawn_app().await;
    let user = app
        .create("ada@example.com", "correct horse battery")
        .await
        .unwrap();

    let first = app
        .client
        .deactivate_user(DeactivateUserRequest {
            user_id: user.user_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let second = app
        .client
        .deactivate_user(DeactivateUserRequest {
            user_id: user.user_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();

    assert_eq!(first.status, UserStatus::Deactivated as i32);
    assert_eq!(second, first, "a second deactivation changes nothing");
    let err = app
        .authenticate("ada@example.com", "correct horse battery")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(app.user_rows().await, 1, "soft delete keeps the row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_publishes_user_registered_once() {
    let mut app = spawn_app().await;

    app.create("ada@example.com", "correct horse battery")
        .await
        .unwrap();
    app.create("ada@example.com", "correct horse battery")
        .await
        .unwrap_err();

    let settings: shop_events::EventsSettings =
        serde_json::from_value(serde_json::json!({ "nats_url": app.nats_url })).unwrap();
    let events = shop_events::Events::connect("test", &settings)
        .await
        .unwrap();
    // One message in the stream, and the outbox row marked published (the
    // relay does that after the stream's ack, so both are waited for).
    shop_testkit::eventually(std::time::Duration::from_secs(10), || async {
        let messages = events.stream_message_count("USERS").await;
        let unpublished: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&app.db)
                .await;
        match (messages, unpublished) {
            (Ok(1), Ok(0)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
}
