//! The catalog API against a real Postgres: a fresh cluster and database per
//! test, the service served in process on port 0.

use shop_proto::shop::catalog::v1::catalog_service_client::CatalogServiceClient;
use shop_proto::shop::catalog::v1::{
    BatchGetProductsRequest, CreateProductRequest, GetProductRequest, ListProductsRequest,
    ListProductsResponse, Product, UpdateProductRequest,
};
use shop_proto::shop::common::v1::Money;
use shop_testkit::Postgres;
use shop_testkit::inproc::RunningApp;
use shop_testkit::status::violated_fields;
use std::collections::HashSet;
use tonic::Code;
use tonic::transport::Channel;

struct TestApp {
    client: CatalogServiceClient<Channel>,
    db: sqlx::PgPool,
    _app: RunningApp,
    _postgres: Postgres,
}

async fn spawn_app() -> TestApp {
    let postgres = Postgres::start().await.expect("postgres starts");
    let url = postgres.create_database("catalog").await.unwrap();
    let config: catalog::Config = shop_runtime::config::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{url}\"\n"
    ))
    .unwrap();
    let app = RunningApp::spawn(catalog::build(config).await.expect("catalog builds"));
    let client = CatalogServiceClient::connect(app.url()).await.unwrap();
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    TestApp {
        client,
        db,
        _app: app,
        _postgres: postgres,
    }
}

fn eur(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency_code: "EUR".into(),
    })
}

fn product(sku: &str, name: &str, category: &str) -> CreateProductRequest {
    CreateProductRequest {
        sku: sku.into(),
        name: name.into(),
        description: String::new(),
        category: category.into(),
        price: eur(1000),
    }
}

impl TestApp {
    async fn create(&mut self, req: CreateProductRequest) -> Result<Product, tonic::Status> {
        self.client
            .create_product(req)
            .await
            .map(|r| r.into_inner().product.unwrap())
    }

    async fn list(
        &mut self,
        req: ListProductsRequest,
    ) -> Result<ListProductsResponse, tonic::Status> {
        self.client.list_products(req).await.map(|r| r.into_inner())
    }

    async fn product_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM products")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_created_product_can_be_read_updated_and_batch_read() {
    let mut app = spawn_app().await;
    let created = app
        .create(product("BK-1", "The Rust Book", "books"))
        .await
        .unwrap();

    let fetched = app
        .client
        .get_product(GetProductRequest {
            product_id: created.product_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(fetched, created);

    let updated = app
        .client
        .update_product(UpdateProductRequest {
            product_id: created.product_id.clone(),
            price: Some(Money {
                amount_minor: 1250,
                currency_code: "USD".into(),
            }),
            category: Some("programming".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(updated.name, "The Rust Book", "untouched fields stay");
    assert_eq!(updated.category, "programming");
    assert_eq!(updated.price.unwrap().amount_minor, 1250);

    let missing = uuid::Uuid::now_v7().to_string();
    let batch = app
        .client
        .batch_get_products(BatchGetProductsRequest {
            product_ids: vec![
                missing.clone(),
                created.product_id.clone(),
                created.product_id.clone(),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.products.len(), 1);
    assert_eq!(batch.products[0].product_id, created.product_id);
    assert_eq!(batch.not_found_product_ids, [missing]);
}

#[tokio::test]
async fn bad_products_are_refused_field_by_field_and_nothing_is_written() {
    let mut app = spawn_app().await;

    let cases: Vec<(CreateProductRequest, Vec<&str>)> = vec![
        (
            CreateProductRequest {
                price: eur(0),
                ..product("A-1", "x", "books")
            },
            vec!["price.amount_minor"],
        ),
        (
            CreateProductRequest {
                price: eur(-5),
                ..product("A-1", "x", "books")
            },
            vec!["price.amount_minor"],
        ),
        (
            CreateProductRequest {
                price: Some(Money {
                    amount_minor: 100,
                    currency_code: "XYZ".into(),
                }),
                ..product("A-1", "x", "books")
            },
            vec!["price.currency_code"],
        ),
        (
            CreateProductRequest {
                price: None,
                ..product("A-1", "x", "books")
            },
            vec!["price"],
        ),
        (
            product("has space", "", "Not A Slug"),
            vec!["sku", "name", "category"],
        ),
    ];
    for (request, fields) in cases {
        let err = app.create(request.clone()).await.unwrap_err();
        assert_eq!(violated_fields(&err), fields, "{request:?}");
    }

    for bad_id in ["", "42", "not-a-uuid"] {
        let err = app
            .client
            .get_product(GetProductRequest {
                product_id: bad_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&err), ["product_id"]);
    }
    let err = app
        .client
        .batch_get_products(BatchGetProductsRequest {
            product_ids: vec![uuid::Uuid::now_v7().to_string(), "nope".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["product_ids[1]"]);
    assert_eq!(app.product_rows().await, 0);
}

#[tokio::test]
async fn a_duplicate_sku_is_already_exists_and_unknown_ids_are_not_found() {
    let mut app = spawn_app().await;
    app.create(product("BK-1", "One", "books")).await.unwrap();

    let duplicate = app
        .create(product("BK-1", "Two", "books"))
        .await
        .unwrap_err();
    let unknown = uuid::Uuid::now_v7().to_string();
    let get = app
        .client
        .get_product(GetProductRequest {
            product_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    let update = app
        .client
        .update_product(UpdateProductRequest {
            product_id: unknown,
            name: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();

    assert_eq!(duplicate.code(), Code::AlreadyExists);
    assert_eq!(get.code(), Code::NotFound);
    assert_eq!(update.code(), Code::NotFound);
    assert_eq!(app.product_rows().await, 1);
}

#[tokio::test]
async fn listing_filters_by_category_and_by_text_in_the_name() {
    let mut app = spawn_app().await;
    app.create(product("B-1", "Rust in Action", "books"))
        .await
        .unwrap();
    app.create(product("B-2", "Programming RUST", "books"))
        .await
        .unwrap();
    app.create(product("K-1", "Rust-proof pan", "kitchen"))
        .await
        .unwrap();
    app.create(product("K-2", "100% cotton towel", "kitchen"))
        .await
        .unwrap();
    app.create(product("K-3", "1000 cotton towels", "kitchen"))
        .await
        .unwrap();

    let names = |r: ListProductsResponse| r.products.into_iter().map(|p| p.sku).collect::<Vec<_>>();
    let books = app
        .list(ListProductsRequest {
            category: "books".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let rust = app
        .list(ListProductsRequest {
            name_contains: "rust".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let rusty_books = app
        .list(ListProductsRequest {
            category: "books".into(),
            name_contains: "RUST".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let percent = app
        .list(ListProductsRequest {
            name_contains: "0%".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    assert_eq!(names(books), ["B-1", "B-2"]);
    assert_eq!(names(rust), ["B-1", "B-2", "K-1"]);
    assert_eq!(names(rusty_books), ["B-1", "B-2"]);
    assert_eq!(names(percent), ["K-2"], "% is matched literally");
}

#[tokio::test]
async fn paging_bounds_and_forged_tokens_are_invalid_arguments() {
    let mut app = spawn_app().await;
    for i in 0..3 {
        app.create(product(&format!("B-{i}"), "Book", "books"))
            .await
            .unwrap();
    }

    for page_size in [-1, 101] {
        let err = app
            .list(ListProductsRequest {
                page_size,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&err), ["page_size"]);
    }
    let first = app
        .list(ListProductsRequest {
            page_size: 1,
            category: "books".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let replayed_with_other_filters = app
        .list(ListProductsRequest {
            page_size: 1,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let forged = app
        .list(ListProductsRequest {
            page_token: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();

    assert_eq!(
        violated_fields(&replayed_with_other_filters),
        ["page_token"]
    );
    assert_eq!(violated_fields(&forged), ["page_token"]);
    let last = app
        .list(ListProductsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(last.products.len(), 3);
    assert!(
        last.next_page_token.is_empty(),
        "no token after the last page"
    );
}

#[tokio::test]
async fn walking_pages_while_products_are_added_skips_and_repeats_nothing() {
    let mut app = spawn_app().await;
    let mut initial = HashSet::new();
    for i in 0..25 {
        let p = app
            .create(product(&format!("B-{i:02}"), "Book", "books"))
            .await
            .unwrap();
        initial.insert(p.product_id);
    }

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut added = 0;
    loop {
        let page = app
            .list(ListProductsRequest {
                page_size: 7,
                page_token: token.clone(),
                category: "books".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.products.len() <= 7);
        seen.extend(page.products.into_iter().map(|p| p.product_id));
        // Another client adds products between our pages.
        app.create(product(&format!("NEW-{added}"), "Book", "books"))
            .await
            .unwrap();
        added += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(added < 50, "the walk ends");
    }

    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no product repeated");
    assert!(
        initial.is_subset(&unique),
        "no product that existed was skipped"
    );
}
