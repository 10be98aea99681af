//! Authenticated requests to the gateway.

/// `message` with the metadata `authorization: Bearer <token>`.
pub fn with_bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .expect("a token is printable ASCII"),
    );
    request
}
