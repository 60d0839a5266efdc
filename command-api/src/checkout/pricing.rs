//! Prices of an order: list prices, and the sale price inside a running event.

/// The prices of an order's courses. One array parameter whatever the cart's
/// size keeps it one primary-key lookup, where a growing `IN (...)` list is
/// planned anew and may scan; only ids and prices, no heavy columns.
pub const COURSE_PRICES: &str = "SELECT id, price_krw FROM courses WHERE id = ANY($1)";

/// The sale price: `price * (100 - discount) / 100`, rounded down.
pub(super) fn discounted(price_krw: i64, discount_percent: i64) -> i64 {
    let discounted = i128::from(price_krw) * i128::from(100 - discount_percent) / 100;
    // Between 0 and `price_krw` for a discount in 0..=100, which the table checks.
    i64::try_from(discounted).unwrap_or(price_krw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sale_prices_round_down() {
        assert_eq!(discounted(10_000, 0), 10_000);
        assert_eq!(discounted(9_999, 50), 4_999);
        assert_eq!(discounted(10_000, 100), 0);
        assert_eq!(discounted(1, 99), 0);
    }
}
