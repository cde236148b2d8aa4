//! A JSON API: prices an order. Takes `{"currency": "EUR", "items": [{"sku": "A-1",
//! "unit_price_cents": 250, "quantity": 2}], "discount_percent": 10}`, validates it, and
//! answers the line totals, the subtotal, the discount and the total, or a 400 saying what
//! is wrong.

use serde::{Deserialize, Serialize};
use thaw_sdk::{Error, Json, Method, Request, StatusCode, handler};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Order {
    currency: String,
    items: Vec<Item>,
    #[serde(default)]
    discount_percent: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    sku: String,
    unit_price_cents: u64,
    quantity: u32,
}

#[derive(Serialize)]
struct Priced {
    currency: String,
    lines: Vec<Line>,
    subtotal_cents: u64,
    discount_cents: u64,
    total_cents: u64,
}

#[derive(Serialize)]
struct Line {
    sku: String,
    quantity: u32,
    total_cents: u64,
}

#[handler]
fn price(req: Request) -> Result<Json<Priced>, Error> {
    if req.method() != Method::POST {
        return Err(Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an order as JSON",
        ));
    }
    let order: Order = thaw_sdk::json(&req)?;
    validate(&order)?;
    let lines: Vec<Line> = order
        .items
        .iter()
        .map(|item| Line {
            sku: item.sku.clone(),
            quantity: item.quantity,
            total_cents: item.unit_price_cents * u64::from(item.quantity),
        })
        .collect();
    let subtotal_cents: u64 = lines.iter().map(|l| l.total_cents).sum();
    let discount_cents = subtotal_cents * u64::from(order.discount_percent) / 100;
    Ok(Json(Priced {
        currency: order.currency.to_uppercase(),
        lines,
        subtotal_cents,
        discount_cents,
        total_cents: subtotal_cents - discount_cents,
    }))
}

fn validate(order: &Order) -> Result<(), Error> {
    if order.currency.len() != 3 || !order.currency.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(Error::bad_request(
            "currency must be a three-letter ISO 4217 code",
        ));
    }
    if order.items.is_empty() {
        return Err(Error::bad_request("an order needs at least one item"));
    }
    if order.discount_percent > 100 {
        return Err(Error::bad_request("discount_percent must be at most 100"));
    }
    for (i, item) in order.items.iter().enumerate() {
        if item.sku.trim().is_empty() {
            return Err(Error::bad_request(format!("items[{i}].sku is empty")));
        }
        if item.quantity == 0 {
            return Err(Error::bad_request(format!(
                "items[{i}].quantity must be positive"
            )));
        }
        // A billion currency units a piece, a million pieces: every product stays far from
        // u64 overflow (1e11 * 1e6 = 1e17 < 1.8e19).
        if item.unit_price_cents > 100_000_000_000 || item.quantity > 1_000_000 {
            return Err(Error::bad_request(format!("items[{i}] is too large")));
        }
    }
    Ok(())
}
