//! The product catalogue: what can be ordered, at what price, and how many exist at first.
//!
//! Products are fixed at build time; only stock levels live in the key-value store (seeded
//! from [`Product::initial_stock`] on first use, see [`crate::stock`]).

use serde::Serialize;

/// ISO 4217 currency of every price in this shop.
pub const CURRENCY: &str = "EUR";

/// A product offered by the shop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    pub sku: &'static str,
    pub name: &'static str,
    /// Price in minor units (cents) of [`CURRENCY`].
    pub price_minor: u64,
    /// Stock seeded into an empty store.
    pub initial_stock: u32,
}

/// Every product the shop sells. SKUs are stable identifiers used as key-value keys.
pub const PRODUCTS: &[Product] = &[
    Product {
        sku: "SPIN-MUG",
        name: "Spin enamel mug",
        price_minor: 1_200,
        initial_stock: 100,
    },
    Product {
        sku: "WASM-TEE-M",
        name: "WebAssembly T-shirt (M)",
        price_minor: 2_500,
        initial_stock: 50,
    },
    Product {
        sku: "WASM-TEE-L",
        name: "WebAssembly T-shirt (L)",
        price_minor: 2_500,
        initial_stock: 50,
    },
    Product {
        sku: "STICKER-PACK",
        name: "Sticker pack (10)",
        price_minor: 400,
        initial_stock: 500,
    },
    Product {
        sku: "LIMITED-PRINT",
        name: "Signed limited print",
        price_minor: 9_900,
        initial_stock: 3,
    },
    Product {
        sku: "SPIN-HOODIE",
        name: "Spin hoodie",
        price_minor: 4_500,
        initial_stock: 40,
    },
    Product {
        sku: "WASI-CAP",
        name: "WASI cap",
        price_minor: 1_800,
        initial_stock: 60,
    },
    Product {
        sku: "FERRIS-PLUSH",
        name: "Ferris plush crab",
        price_minor: 2_200,
        initial_stock: 80,
    },
    Product {
        sku: "COMPONENT-POSTER",
        name: "Component model poster",
        price_minor: 1_500,
        initial_stock: 120,
    },
    Product {
        sku: "PUBSUB-SOCKS",
        name: "Pub/sub socks",
        price_minor: 900,
        initial_stock: 200,
    },
    Product {
        sku: "TRACE-NOTEBOOK",
        name: "Distributed tracing notebook",
        price_minor: 1_100,
        initial_stock: 150,
    },
    Product {
        sku: "EDGE-BOTTLE",
        name: "Edge water bottle",
        price_minor: 1_900,
        initial_stock: 70,
    },
];

/// Looks a product up by SKU (exact, case-sensitive).
pub fn find(sku: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|p| p.sku == sku)
}

/// Formats minor units as a human amount, e.g. `1250` → `"12.50 EUR"`.
pub fn format_money(minor: u64) -> String {
    format!("{}.{:02} {CURRENCY}", minor / 100, minor % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_are_unique_and_key_safe() {
        for (i, p) in PRODUCTS.iter().enumerate() {
            assert!(
                PRODUCTS[i + 1..].iter().all(|q| q.sku != p.sku),
                "{}",
                p.sku
            );
            assert!(p
                .sku
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-'));
        }
    }

    #[test]
    fn find_is_exact() {
        assert_eq!(find("SPIN-MUG").map(|p| p.price_minor), Some(1_200));
        assert!(find("spin-mug").is_none());
        assert!(find("").is_none());
    }

    #[test]
    fn money_formats_minor_units() {
        assert_eq!(format_money(0), "0.00 EUR");
        assert_eq!(format_money(5), "0.05 EUR");
        assert_eq!(format_money(123_456), "1234.56 EUR");
    }
}
