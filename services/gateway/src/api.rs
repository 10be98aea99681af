//! `shop.gateway.v1.ShopGatewayService`: the public API.
//!
//! Public calls (SignUp, LogIn) pass the abuse limits first; browsing
//! (ListProducts, GetProduct) is open; every order call is authenticated,
//! acts as the token's subject and treats other users' orders as
//! nonexistent (`NOT_FOUND`, with the text orders itself uses).

use crate::auth::{Authenticator, Caller};
use crate::limits::Limiter;
use crate::parts::{self, Budget};
use crate::upstream::{Upstreams, relay, rename_field};
use shop_proto::shop::catalog::v1 as catalog;
use shop_proto::shop::gateway::v1::shop_gateway_service_server::ShopGatewayService;
use shop_proto::shop::gateway::v1::{
    CancelOrderRequest, CancelOrderResponse, CatalogItem, DeactivateAccountRequest,
    DeactivateAccountResponse, GetAccountRequest, GetAccountResponse, GetOrderDetailsRequest,
    GetOrderDetailsResponse, GetOrderRequest, GetOrderResponse, GetProductRequest,
    GetProductResponse, ListOrdersRequest, ListOrdersResponse, ListProductsRequest,
    ListProductsResponse, LogInRequest, LogInResponse, MissingPart, OrderLineDetail, Part,
    PlaceOrderRequest, PlaceOrderResponse, SignUpRequest, SignUpResponse, UpdateAccountRequest,
    UpdateAccountResponse, WatchOrderRequest,
};
use shop_proto::shop::inventory::v1::BatchGetStockRequest;
use shop_proto::shop::orders::v1 as orders;
use shop_proto::shop::payments::v1::ListPaymentsRequest;
use shop_proto::shop::users::v1 as users;
use shop_runtime::ServiceError;
use shop_runtime::convert::parse_uuid;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// Payments of one order fetched for its details: an order has at most one
/// today, and the page bound keeps a surprise from growing the answer.
const PAYMENTS_PER_ORDER: i32 = 100;

pub(crate) struct GatewayApi {
    pub(crate) up: Upstreams,
    pub(crate) auth: Authenticator,
    pub(crate) login: Arc<Limiter>,
    pub(crate) signup: Arc<Limiter>,
    pub(crate) budget: Budget,
    pub(crate) flags: shop_flags::Flags,
    pub(crate) watches: crate::watch::Watches,
}

/// The operational kill switch of the inventory fan-out: a boolean flag,
/// on by default; off, ListProducts, GetProduct and GetOrderDetails answer
/// without availability (PART_STOCK missing, UNAVAILABLE) and inventory is
/// not called, for shedding load in an incident without a deploy.
pub(crate) const PRODUCT_AVAILABILITY: &str = "gateway.product-availability";

/// The caller's address, as the server's listener recorded it.
fn peer<T>(request: &Request<T>) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<shop_identity::Peer>()
        .map(|p| p.remote_addr.ip())
}

impl GatewayApi {
    /// The caller's order `raw_id`, or `NOT_FOUND` if it does not exist
    /// or is someone else's (indistinguishable on purpose).
    async fn own_order(&self, caller: Caller, raw_id: &str) -> Result<orders::Order, Status> {
        let order_id = parse_uuid("order_id", raw_id)?;
        let not_found = || Status::not_found(format!("order {order_id} not found"));
        let order = self
            .up
            .orders
            .clone()
            .get_order(orders::GetOrderRequest {
                order_id: order_id.to_string(),
            })
            .await
            .map_err(|s| relay("orders", s))?
            .into_inner()
            .order
            .ok_or_else(not_found)?;
        if Uuid::parse_str(&order.user_id).ok() != Some(caller.user_id) {
            tracing::info!(%order_id, caller = %caller.user_id, "order of another user asked for");
            return Err(not_found());
        }
        Ok(order)
    }

    /// Available quantities of `ids` from inventory, in one call; products
    /// without a stock record are absent from the map.
    async fn stock(
        &self,
        ids: Vec<String>,
        budget: std::time::Duration,
    ) -> Result<HashMap<String, i64>, MissingPart> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let on = self
            .flags
            .bool(
                PRODUCT_AVAILABILITY,
                true,
                &shop_flags::EvaluationContext::default(),
            )
            .await;
        if !on {
            return Err(parts::switched_off(Part::Stock, PRODUCT_AVAILABILITY));
        }
        let mut inventory = self.up.inventory.clone();
        parts::fetch(Part::Stock, budget, async move {
            let stocks = inventory
                .batch_get_stock(BatchGetStockRequest { product_ids: ids })
                .await?
                .into_inner()
                .stocks;
            Ok(stocks
                .into_iter()
                .map(|s| (s.product_id, s.available))
                .collect())
        })
        .await
    }
}

/// The value of an optional part, or `None` with the reason recorded.
fn take<T>(part: Result<T, MissingPart>, missing: &mut Vec<MissingPart>) -> Option<T> {
    part.map_err(|m| missing.push(m)).ok()
}

fn items(products: Vec<catalog::Product>, stock: &HashMap<String, i64>) -> Vec<CatalogItem> {
    products
        .into_iter()
        .map(|p| CatalogItem {
            available_quantity: stock.get(&p.product_id).copied(),
            product: Some(p),
        })
        .collect()
}

#[tonic::async_trait]
impl ShopGatewayService for GatewayApi {
    async fn sign_up(
        &self,
        request: Request<SignUpRequest>,
    ) -> Result<Response<SignUpResponse>, Status> {
        self.signup
            .check(&request.get_ref().email, peer(&request))?;
        let req = request.into_inner();
        let user = self
            .up
            .users
            .clone()
            .create_user(users::CreateUserRequest {
                email: req.email,
                password: req.password,
                display_name: req.display_name,
            })
            .await
            .map_err(|s| relay("users", s))?
            .into_inner()
            .user;
        Ok(Response::new(SignUpResponse { user }))
    }

    async fn log_in(
        &self,
        request: Request<LogInRequest>,
    ) -> Result<Response<LogInResponse>, Status> {
        self.login.check(&request.get_ref().email, peer(&request))?;
        let req = request.into_inner();
        let token = self
            .up
            .users
            .clone()
            .authenticate(users::AuthenticateRequest {
                email: req.email,
                password: req.password,
            })
            .await
            .map_err(|s| relay("users", s))?
            .into_inner();
        Ok(Response::new(LogInResponse {
            access_token: token.access_token,
            expire_time: token.expire_time,
            user_id: token.user_id,
            token_type: token.token_type,
        }))
    }

    async fn list_products(
        &self,
        request: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        let req = request.into_inner();
        let page = self
            .up
            .catalog
            .clone()
            .list_products(catalog::ListProductsRequest {
                page_size: req.page_size,
                page_token: req.page_token,
                category: req.category,
                name_contains: req.name_contains,
            })
            .await
            .map_err(|s| relay("catalog", s))?
            .into_inner();
        // One batch call for the whole page.
        let ids = page.products.iter().map(|p| p.product_id.clone()).collect();
        let (stock, missing) = match self.stock(ids, self.budget.now()).await {
            Ok(stock) => (stock, vec![]),
            Err(missing) => (HashMap::new(), vec![missing]),
        };
        Ok(Response::new(ListProductsResponse {
            items: items(page.products, &stock),
            next_page_token: page.next_page_token,
            missing,
        }))
    }

    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<GetProductResponse>, Status> {
        let id = parse_uuid("product_id", &request.get_ref().product_id)?.to_string();
        let mut catalog = self.up.catalog.clone();
        let product = async {
            catalog
                .get_product(catalog::GetProductRequest {
                    product_id: id.clone(),
                })
                .await
                .map_err(|s| relay("catalog", s))
        };
        // The product and its stock at once: the id is all either needs.
        let (product, stock) =
            tokio::join!(product, self.stock(vec![id.clone()], self.budget.now()));
        let product = product?
            .into_inner()
            .product
            .ok_or_else(|| Status::not_found(format!("product {id} not found")))?;
        let (stock, missing) = match stock {
            Ok(stock) => (stock, vec![]),
            Err(missing) => (HashMap::new(), vec![missing]),
        };
        Ok(Response::new(GetProductResponse {
            item: items(vec![product], &stock).pop(),
            missing,
        }))
    }

    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<PlaceOrderResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let req = request.into_inner();
        let order = self
            .up
            .orders
            .clone()
            .place_order(orders::PlaceOrderRequest {
                // The caller, never anyone named in the body.
                user_id: caller.user_id.to_string(),
                lines: req.lines,
                payment_token: req.payment_token,
                idempotency_key: req.idempotency_key,
            })
            .await
            .map_err(|s| relay("orders", s))?
            .into_inner()
            .order;
        // orders binds an idempotency key to its user (the key's
        // fingerprint includes it); this holds even if that changes.
        if let Some(order) = &order
            && Uuid::parse_str(&order.user_id).ok() != Some(caller.user_id)
        {
            return Err(Status::already_exists(
                "this idempotency_key was already used for a different order",
            ));
        }
        Ok(Response::new(PlaceOrderResponse { order }))
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<CancelOrderResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let req = request.into_inner();
        let order = self.own_order(caller, &req.order_id).await?;
        let order = self
            .up
            .orders
            .clone()
            .cancel_order(orders::CancelOrderRequest {
                order_id: order.order_id,
                detail: req.detail,
            })
            .await
            .map_err(|s| relay("orders", s))?
            .into_inner()
            .order;
        Ok(Response::new(CancelOrderResponse { order }))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let order = self.own_order(caller, &request.get_ref().order_id).await?;
        Ok(Response::new(GetOrderResponse { order: Some(order) }))
    }

    type WatchOrderStream = crate::watch::OrderStream;

    async fn watch_order(
        &self,
        request: Request<WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let caller = self.auth.caller(&request).await?;
        let first = self.own_order(caller, &request.get_ref().order_id).await?;
        let stream = self.watches.watch(self.up.orders.clone(), first)?;
        Ok(Response::new(stream))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let req = request.into_inner();
        // orders binds the page token to the user, so another user's token
        // is refused as INVALID_ARGUMENT.
        let page = self
            .up
            .orders
            .clone()
            .list_orders(orders::ListOrdersRequest {
                page_size: req.page_size,
                page_token: req.page_token,
                user_id: caller.user_id.to_string(),
                status: req.status,
            })
            .await
            .map_err(|s| relay("orders", s))?
            .into_inner();
        Ok(Response::new(ListOrdersResponse {
            orders: page.orders,
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_order_details(
        &self,
        request: Request<GetOrderDetailsRequest>,
    ) -> Result<Response<GetOrderDetailsResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        // The order is essential: without it there is nothing to detail.
        let order = self.own_order(caller, &request.get_ref().order_id).await?;

        // Everything else is optional, fetched at once, each part within
        // its share of what is left.
        let budget = self.budget.now();
        let ids: Vec<String> = order.lines.iter().map(|l| l.product_id.clone()).collect();
        let mut users = self.up.users.clone();
        let mut catalog = self.up.catalog.clone();
        let mut payments = self.up.payments.clone();
        let user = parts::fetch(Part::User, budget, async move {
            Ok(users
                .get_user(users::GetUserRequest {
                    user_id: caller.user_id.to_string(),
                })
                .await?
                .into_inner()
                .user)
        });
        let product_ids = ids.clone();
        let products = parts::fetch(Part::Products, budget, async move {
            let products = catalog
                .batch_get_products(catalog::BatchGetProductsRequest { product_ids })
                .await?
                .into_inner()
                .products;
            Ok(products
                .into_iter()
                .map(|p| (p.product_id.clone(), p))
                .collect::<HashMap<_, _>>())
        });
        let order_id = order.order_id.clone();
        let paid = parts::fetch(Part::Payments, budget, async move {
            Ok(payments
                .list_payments(ListPaymentsRequest {
                    page_size: PAYMENTS_PER_ORDER,
                    page_token: String::new(),
                    order_id,
                })
                .await?
                .into_inner()
                .payments)
        });
        let (user, products, stock, paid) =
            tokio::join!(user, products, self.stock(ids, budget), paid);

        let mut missing = Vec::new();
        let user = take(user, &mut missing).flatten();
        let products = take(products, &mut missing).unwrap_or_default();
        let stock = take(stock, &mut missing).unwrap_or_default();
        let payments = take(paid, &mut missing).unwrap_or_default();
        let lines = order
            .lines
            .iter()
            .map(|line| OrderLineDetail {
                product: products.get(&line.product_id).cloned(),
                available_quantity: stock.get(&line.product_id).copied(),
                line: Some(line.clone()),
            })
            .collect();
        Ok(Response::new(GetOrderDetailsResponse {
            order: Some(order),
            user,
            lines,
            payments,
            missing,
        }))
    }

    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<GetAccountResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let user = self
            .up
            .users
            .clone()
            .get_user(users::GetUserRequest {
                user_id: caller.user_id.to_string(),
            })
            .await
            .map_err(|s| relay("users", s))?
            .into_inner()
            .user;
        Ok(Response::new(GetAccountResponse { user }))
    }

    async fn update_account(
        &self,
        request: Request<UpdateAccountRequest>,
    ) -> Result<Response<UpdateAccountResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let guarded = {
            let req = request.get_ref();
            req.email.is_some() || req.new_password.is_some()
        };
        if request.get_ref().current_password.is_some() {
            // A password guess: counted like a log-in, by account.
            self.login
                .check(&caller.user_id.to_string(), peer(&request))?;
        }
        let req = request.into_inner();
        if guarded && req.current_password.is_none() {
            return Err(ServiceError::invalid(
                "current_password",
                "is required to change the email or the password",
            )
            .into());
        }
        let user = self
            .up
            .users
            .clone()
            .update_user(users::UpdateUserRequest {
                user_id: caller.user_id.to_string(),
                email: req.email,
                display_name: req.display_name,
                password: req.new_password,
                current_password: req.current_password,
            })
            .await
            .map_err(|s| rename_field(relay("users", s), "password", "new_password"))?
            .into_inner()
            .user;
        Ok(Response::new(UpdateAccountResponse { user }))
    }

    async fn deactivate_account(
        &self,
        request: Request<DeactivateAccountRequest>,
    ) -> Result<Response<DeactivateAccountResponse>, Status> {
        let caller = self.auth.caller(&request).await?;
        let user = self
            .up
            .users
            .clone()
            .deactivate_user(users::DeactivateUserRequest {
                user_id: caller.user_id.to_string(),
            })
            .await
            .map_err(|s| relay("users", s))?
            .into_inner()
            .user;
        self.auth.forget(caller.user_id);
        Ok(Response::new(DeactivateAccountResponse { user }))
    }
}
