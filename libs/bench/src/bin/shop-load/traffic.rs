//! The end users' traffic: shoppers, the mix of actions, what each RPC saw,
//! and one open-loop run at a fixed rate.

use hdrhistogram::Histogram;
use rand::Rng as _;
use shop_proto::shop::gateway::v1 as gw;
use shop_proto::shop::gateway::v1::shop_gateway_service_client::ShopGatewayServiceClient;
use shop_proto::shop::inventory::v1::SetStockRequest;
use shop_proto::shop::inventory::v1::inventory_service_client::InventoryServiceClient;
use shop_proto::shop::orders::v1::NewOrderLine;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Request};

/// What one RPC saw.
#[derive(Default)]
pub(crate) struct Rpc {
    pub(crate) calls: u64,
    /// The service's fault (counted against availability).
    pub(crate) failures: u64,
    /// Answers that are not OK but not the service's fault, by code.
    pub(crate) answered: BTreeMap<String, u64>,
    pub(crate) latency: Option<Histogram<u64>>,
    /// Per second since the load began: latencies of successful calls (µs).
    pub(crate) per_second: BTreeMap<u64, Histogram<u64>>,
}

impl Rpc {
    fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
    }

    fn record(&mut self, second: u64, took: Duration, result: Result<(), Code>) {
        self.calls += 1;
        match result {
            Ok(()) => {
                let us = (took.as_micros() as u64).clamp(1, 120_000_000);
                self.latency
                    .get_or_insert_with(Self::histogram)
                    .saturating_record(us);
                self.per_second
                    .entry(second)
                    .or_insert_with(Self::histogram)
                    .saturating_record(us);
            }
            Err(code) if is_fault(code) => self.failures += 1,
            Err(code) => *self.answered.entry(format!("{code:?}")).or_insert(0) += 1,
        }
    }
}

fn is_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Internal
            | Code::Unknown
            | Code::DeadlineExceeded
            // This client's own 10 s timeout: a call the system did not answer.
            | Code::Cancelled
            | Code::DataLoss
    )
}

/// One open-loop run at a fixed rate: what was offered and what each RPC saw.
pub(crate) struct Run {
    pub(crate) rate: f64,
    pub(crate) secs: u64,
    pub(crate) max_in_flight: usize,
    /// Actions due in the run.
    pub(crate) actions: u64,
    /// Actions not started: `max_in_flight` were already in flight.
    pub(crate) dropped: u64,
    /// From the first action to the last answer.
    pub(crate) elapsed: Duration,
    pub(crate) rpcs: BTreeMap<&'static str, Rpc>,
}

/// A shopper the load acts as.
#[derive(Clone)]
struct Shopper {
    email: String,
    token: String,
    /// When `token` was issued (access tokens are valid 15 minutes).
    logged_in: Instant,
    orders: Vec<String>,
}

const PASSWORD: &str = "correct horse battery";

pub(crate) struct Load {
    gateway: ShopGatewayServiceClient<Channel>,
    products: Vec<String>,
    shoppers: Mutex<Vec<Shopper>>,
    rpcs: Mutex<BTreeMap<&'static str, Rpc>>,
    start: Instant,
}

impl Load {
    /// The catalog as a shopper sees it, stocked (as the operator, on
    /// `inventory`) for any run, and a few shoppers to begin with (within
    /// the sign-up limit's burst).
    pub(crate) async fn prepare(
        mut gateway: ShopGatewayServiceClient<Channel>,
        mut inventory: InventoryServiceClient<Channel>,
    ) -> anyhow::Result<Arc<Self>> {
        let page = gateway
            .list_products(gw::ListProductsRequest {
                page_size: 50,
                ..Default::default()
            })
            .await?
            .into_inner();
        let products: Vec<String> = page
            .items
            .into_iter()
            .filter_map(|i| i.product.map(|p| p.product_id))
            .collect();
        anyhow::ensure!(
            !products.is_empty(),
            "the catalog is empty: run `just up` (it seeds one)"
        );
        for product_id in &products {
            inventory
                .set_stock(SetStockRequest {
                    product_id: product_id.clone(),
                    available: 1_000_000,
                })
                .await?;
        }
        let load = Arc::new(Load {
            gateway,
            products,
            shoppers: Mutex::new(Vec::new()),
            rpcs: Mutex::new(BTreeMap::new()),
            start: Instant::now(),
        });
        for _ in 0..4 {
            load.sign_up().await;
        }
        Ok(load)
    }

    /// Actions at `rate` per second for `secs` s, open loop, then what each
    /// RPC saw since the last run (the first run also has `prepare`'s
    /// sign-ups). In-flight calls finish before it returns.
    pub(crate) async fn run(self: &Arc<Self>, rate: f64, secs: u64, max_in_flight: usize) -> Run {
        let period = Duration::from_secs_f64(1.0 / rate);
        let started = Instant::now();
        let until = started + Duration::from_secs(secs);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
        let mut tasks = tokio::task::JoinSet::new();
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let (mut dropped, mut n) = (0u64, 0u64);
        let mut next_sign_up = started + Duration::from_secs(8);
        let mut next_log_in = started + Duration::from_secs(1);
        while Instant::now() < until {
            ticker.tick().await;
            n += 1;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                dropped += 1;
                continue;
            };
            let load = self.clone();
            let now = Instant::now();
            let action = if now >= next_sign_up {
                next_sign_up = now + Duration::from_secs(8);
                0
            } else if now >= next_log_in {
                next_log_in = now + Duration::from_secs(2);
                1
            } else {
                2
            };
            let roll = rand::rng().random_range(0..100);
            tasks.spawn(async move {
                match action {
                    0 => load.sign_up().await,
                    1 => {
                        if let Some(email) = load.stalest() {
                            load.log_in(email).await;
                        }
                    }
                    _ => load.act(roll).await,
                }
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        // Calls still in flight finish (bounded by the channel's timeout).
        while tasks.join_next().await.is_some() {}
        Run {
            rate,
            secs,
            max_in_flight,
            actions: n,
            dropped,
            elapsed: started.elapsed(),
            rpcs: std::mem::take(&mut *self.rpcs.lock().expect("not poisoned")),
        }
    }

    async fn timed<T>(
        &self,
        rpc: &'static str,
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Option<T> {
        let started = Instant::now();
        let result = call.await;
        let second = started.duration_since(self.start).as_secs();
        let mut rpcs = self.rpcs.lock().expect("not poisoned");
        let entry = rpcs.entry(rpc).or_default();
        match result {
            Ok(value) => {
                entry.record(second, started.elapsed(), Ok(()));
                Some(value)
            }
            Err(status) => {
                entry.record(second, started.elapsed(), Err(status.code()));
                None
            }
        }
    }

    fn shopper(&self) -> Option<(usize, Shopper)> {
        let shoppers = self.shoppers.lock().expect("not poisoned");
        if shoppers.is_empty() {
            return None;
        }
        let i = rand::rng().random_range(0..shoppers.len());
        Some((i, shoppers[i].clone()))
    }

    /// The shopper whose token is oldest: log-ins renew it, so a long
    /// search keeps every token valid.
    fn stalest(&self) -> Option<String> {
        let shoppers = self.shoppers.lock().expect("not poisoned");
        shoppers
            .iter()
            .min_by_key(|s| s.logged_in)
            .map(|s| s.email.clone())
    }

    fn bearer<T>(token: &str, body: T) -> Request<T> {
        let mut request = Request::new(body);
        if let Ok(value) = format!("Bearer {token}").parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    async fn sign_up(&self) {
        let email = format!("load-{}@example.com", uuid::Uuid::new_v4().simple());
        let mut gateway = self.gateway.clone();
        let signed_up = self
            .timed(
                "SignUp",
                gateway.sign_up(gw::SignUpRequest {
                    email: email.clone(),
                    password: PASSWORD.into(),
                    display_name: "Load".into(),
                }),
            )
            .await;
        if signed_up.is_some() {
            self.log_in(email).await;
        }
    }

    async fn log_in(&self, email: String) {
        let mut gateway = self.gateway.clone();
        if let Some(r) = self
            .timed(
                "LogIn",
                gateway.log_in(gw::LogInRequest {
                    email: email.clone(),
                    password: PASSWORD.into(),
                }),
            )
            .await
        {
            let token = r.into_inner().access_token;
            let logged_in = Instant::now();
            let mut shoppers = self.shoppers.lock().expect("not poisoned");
            match shoppers.iter_mut().find(|s| s.email == email) {
                Some(s) => {
                    s.token = token;
                    s.logged_in = logged_in;
                }
                None => shoppers.push(Shopper {
                    email,
                    token,
                    logged_in,
                    orders: Vec::new(),
                }),
            }
        }
    }

    fn product(&self) -> String {
        self.products[rand::rng().random_range(0..self.products.len())].clone()
    }

    async fn act(&self, roll: u32) {
        let mut gateway = self.gateway.clone();
        match roll {
            0..40 => {
                self.timed(
                    "ListProducts",
                    gateway.list_products(gw::ListProductsRequest {
                        page_size: 10,
                        ..Default::default()
                    }),
                )
                .await;
            }
            40..60 => {
                self.timed(
                    "GetProduct",
                    gateway.get_product(gw::GetProductRequest {
                        product_id: self.product(),
                    }),
                )
                .await;
            }
            60..80 => {
                let Some((i, shopper)) = self.shopper() else {
                    return;
                };
                let payment_token = match rand::rng().random_range(0..10) {
                    0 => "tok_decline",
                    1 => "tok_fail_transient",
                    2 => "tok_approve_slow",
                    _ => "tok_approve",
                };
                let placed = self
                    .timed(
                        "PlaceOrder",
                        gateway.place_order(Self::bearer(
                            &shopper.token,
                            gw::PlaceOrderRequest {
                                lines: vec![NewOrderLine {
                                    product_id: self.product(),
                                    quantity: 1,
                                }],
                                payment_token: payment_token.into(),
                                idempotency_key: uuid::Uuid::new_v4().to_string(),
                            },
                        )),
                    )
                    .await;
                if let Some(order) = placed.and_then(|r| r.into_inner().order) {
                    let mut shoppers = self.shoppers.lock().expect("not poisoned");
                    if let Some(s) = shoppers.get_mut(i) {
                        s.orders.push(order.order_id);
                    }
                }
            }
            80..92 => {
                let Some((_, shopper)) = self.shopper() else {
                    return;
                };
                let Some(order_id) = shopper.orders.last().cloned() else {
                    return;
                };
                self.timed(
                    "GetOrderDetails",
                    gateway.get_order_details(Self::bearer(
                        &shopper.token,
                        gw::GetOrderDetailsRequest { order_id },
                    )),
                )
                .await;
            }
            _ => {
                let Some((_, shopper)) = self.shopper() else {
                    return;
                };
                self.timed(
                    "ListOrders",
                    gateway.list_orders(Self::bearer(
                        &shopper.token,
                        gw::ListOrdersRequest {
                            page_size: 10,
                            ..Default::default()
                        },
                    )),
                )
                .await;
            }
        }
    }
}
