//! What each notification says, and the listing's page token. Pure: no I/O.

use shop_proto::shop::common::v1::CancellationReason;
use uuid::Uuid;

/// Longest cancellation detail quoted in a message.
const MAX_DETAIL_CHARS: usize = 200;

/// What a notification is about; stored as text in `notifications.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Welcome,
    OrderConfirmed,
    OrderCancelled,
}

impl Kind {
    pub(crate) fn as_db(self) -> &'static str {
        match self {
            Kind::Welcome => "welcome",
            Kind::OrderConfirmed => "order_confirmed",
            Kind::OrderCancelled => "order_cancelled",
        }
    }

    pub(crate) fn from_db(s: &str) -> Option<Self> {
        match s {
            "welcome" => Some(Kind::Welcome),
            "order_confirmed" => Some(Kind::OrderConfirmed),
            "order_cancelled" => Some(Kind::OrderCancelled),
            _ => None,
        }
    }
}

/// A subject line and a message text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) subject: String,
    pub(crate) body: String,
}

/// An amount in minor units of a currency, as the events carry it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Amount<'a> {
    pub(crate) minor: i64,
    pub(crate) currency: &'a str,
}

/// `4200 EUR` as `42.00 EUR`, `500 JPY` as `500 JPY`: as many decimals as
/// the currency has minor digits (two when the code is unknown).
pub(crate) fn format_money(amount: Amount<'_>) -> String {
    let exponent = iso_currency::Currency::from_code(amount.currency)
        .and_then(|c| c.exponent())
        .unwrap_or(2);
    let sign = if amount.minor < 0 { "-" } else { "" };
    let abs = amount.minor.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{abs} {}", amount.currency);
    }
    let unit = 10u64.pow(u32::from(exponent));
    format!(
        "{sign}{}.{:0width$} {}",
        abs / unit,
        abs % unit,
        amount.currency,
        width = usize::from(exponent)
    )
}

/// The first block of a UUID, as people quote an order number.
fn short_id(id: Uuid) -> String {
    id.simple().to_string()[..8].to_string()
}

fn items(quantity: i64) -> String {
    if quantity == 1 {
        "1 item".to_string()
    } else {
        format!("{quantity} items")
    }
}

fn order_summary(quantity: i64, total: Option<Amount<'_>>) -> String {
    match total {
        Some(t) => format!("{}, {}", items(quantity), format_money(t)),
        None => items(quantity),
    }
}

/// Welcome message after UserRegistered.
pub(crate) fn welcome(display_name: &str, email: &str) -> Message {
    let name = display_name.trim();
    let name = if name.is_empty() { "there" } else { name };
    Message {
        subject: format!("Welcome to the shop, {name}!"),
        body: format!(
            "Hello {name}, your account {email} is ready. We will write to you here about your orders."
        ),
    }
}

/// The order was confirmed: stock reserved and payment captured.
pub(crate) fn order_confirmed(order_id: Uuid, quantity: i64, total: Option<Amount<'_>>) -> Message {
    let short = short_id(order_id);
    Message {
        subject: format!("Your order {short} is confirmed"),
        body: format!(
            "Your order {short} is confirmed: {}. We are getting it ready. (Order reference {order_id}.)",
            order_summary(quantity, total)
        ),
    }
}

fn reason_text(reason: CancellationReason) -> &'static str {
    match reason {
        CancellationReason::UserRequested => "you asked us to cancel it",
        CancellationReason::OutOfStock => "some items are out of stock",
        CancellationReason::PaymentDeclined => "the payment was declined",
        CancellationReason::SagaTimeout => "we could not complete it in time",
        CancellationReason::PaymentMismatch => "the payment did not match the order's total",
        CancellationReason::Unspecified => "of a problem on our side",
    }
}

/// The order was cancelled, for `reason` (an unknown number reads as
/// unspecified); `detail` is quoted, shortened.
pub(crate) fn order_cancelled(
    order_id: Uuid,
    quantity: i64,
    total: Option<Amount<'_>>,
    reason: i32,
    detail: &str,
) -> Message {
    let short = short_id(order_id);
    let reason = CancellationReason::try_from(reason).unwrap_or(CancellationReason::Unspecified);
    let detail: String = detail
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DETAIL_CHARS)
        .collect();
    let detail = detail.trim();
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    };
    Message {
        subject: format!("Your order {short} was cancelled"),
        body: format!(
            "Your order {short} ({}) was cancelled because {}{detail}. \
             Reserved items were released and anything charged for it will be refunded. \
             (Order reference {order_id}.)",
            order_summary(quantity, total),
            reason_text(reason),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_has_as_many_decimals_as_the_currency() {
        let m = |minor, currency| format_money(Amount { minor, currency });
        assert_eq!(m(4200, "EUR"), "42.00 EUR");
        assert_eq!(m(1999, "USD"), "19.99 USD");
        assert_eq!(m(5, "USD"), "0.05 USD");
        assert_eq!(m(500, "JPY"), "500 JPY");
        assert_eq!(m(1234, "KWD"), "1.234 KWD");
        assert_eq!(m(-150, "EUR"), "-1.50 EUR");
    }

    #[test]
    fn a_confirmation_says_what_was_ordered() {
        let id: Uuid = "01900000-1234-7000-8000-000000000000".parse().unwrap();
        let m = order_confirmed(
            id,
            2,
            Some(Amount {
                minor: 4200,
                currency: "EUR",
            }),
        );
        assert_eq!(m.subject, "Your order 01900000 is confirmed");
        assert!(
            m.body
                .starts_with("Your order 01900000 is confirmed: 2 items, 42.00 EUR."),
            "{}",
            m.body
        );
    }

    #[test]
    fn a_cancellation_gives_the_reason_and_its_detail() {
        let id = Uuid::now_v7();
        let m = order_cancelled(
            id,
            1,
            None,
            CancellationReason::PaymentDeclined as i32,
            "card declined\n",
        );
        assert!(
            m.body.contains(
                "(1 item) was cancelled because the payment was declined (card declined)."
            ),
            "{}",
            m.body
        );
        let unknown = order_cancelled(id, 1, None, 99, "");
        assert!(unknown.body.contains("because of a problem on our side."));
    }
}
