//! `users`: serves `shop.users.v1.UserService`. Configuration: see
//! [`users::Config`].

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shop_runtime::run("users", users::build).await
}
