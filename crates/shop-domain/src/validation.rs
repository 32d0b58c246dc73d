//! Turning a `POST /api/orders` body into a valid order, or into errors naming each field.
//!
//! ```json
//! {
//!   "email": "ada@example.com",
//!   "items": [{ "sku": "SPIN-MUG", "quantity": 2 }],
//!   "card": { "number": "4242 4242 4242 4242", "expiry": "12/30", "cvc": "123" }
//! }
//! ```

use chrono::NaiveDate;
use serde_json::Value;

use crate::catalogue;
use crate::ids::body_fingerprint;
use crate::order::OrderLine;
use crate::payment::{validate_card, ValidCard};
use crate::problem::{FieldError, Problem};
use serde_json::json;

/// Largest request body accepted; larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest quantity of one SKU in one order.
pub const MAX_QUANTITY: u64 = 10;
/// Most distinct lines in one order.
pub const MAX_LINES: usize = 20;
/// Longest email address (RFC 5321 path limit).
const MAX_EMAIL_LEN: usize = 254;

/// An order request that passed every check. Holds the card only until it is authorised.
pub struct ValidOrder {
    pub email: String,
    pub lines: Vec<OrderLine>,
    pub card: ValidCard,
    /// Fingerprint of the request, for idempotent retries: what it asks for, with the
    /// card reduced to what the shop keeps (never its number or CVC).
    pub fingerprint: String,
}

impl ValidOrder {
    pub fn total_minor(&self) -> u64 {
        self.lines.iter().map(OrderLine::subtotal_minor).sum()
    }
}

/// Why a request body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Not JSON at all (400).
    Malformed(String),
    /// JSON, but fields are missing, of the wrong type or invalid (422).
    Invalid(Vec<FieldError>),
}

impl RequestError {
    pub fn to_problem(&self) -> Problem {
        match self {
            RequestError::Malformed(detail) => Problem::malformed_json(detail.clone()),
            RequestError::Invalid(errors) => Problem::validation(errors.clone()),
        }
    }
}

/// Parses and validates an order request body. `today` (UTC) decides card expiry.
pub fn parse_order_request(body: &[u8], today: NaiveDate) -> Result<ValidOrder, RequestError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| RequestError::Malformed(e.to_string()))?;
    let Value::Object(fields) = &value else {
        return Err(RequestError::Invalid(vec![FieldError::new(
            "",
            "must be a JSON object",
        )]));
    };

    let mut errors = Vec::new();
    for name in fields.keys() {
        if !matches!(name.as_str(), "email" | "items" | "card") {
            errors.push(FieldError::new(
                format!("/{}", escape_pointer(name)),
                "is not a known field (expected email, items, card)",
            ));
        }
    }

    let email = match fields.get("email") {
        None => {
            errors.push(FieldError::new("/email", "is required"));
            None
        }
        Some(Value::String(s)) => match validate_email(s) {
            Ok(()) => Some(s.trim().to_owned()),
            Err(detail) => {
                errors.push(FieldError::new("/email", detail));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new("/email", "must be a string"));
            None
        }
    };

    let lines = parse_items(fields.get("items"), &mut errors);
    let card = parse_card(fields.get("card"), today, &mut errors);

    match (email, lines, card) {
        (Some(email), Some(lines), Some(card)) if errors.is_empty() => {
            let fingerprint = body_fingerprint(&json!({
                "email": email,
                "items": lines.iter().map(|l| json!({"sku": l.sku, "quantity": l.quantity})).collect::<Vec<_>>(),
                "card": card.fingerprint_part(),
            }));
            Ok(ValidOrder {
                email,
                lines,
                card,
                fingerprint,
            })
        }
        _ => Err(RequestError::Invalid(errors)),
    }
}

fn parse_items(items: Option<&Value>, errors: &mut Vec<FieldError>) -> Option<Vec<OrderLine>> {
    let items = match items {
        None => {
            errors.push(FieldError::new("/items", "is required"));
            return None;
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            errors.push(FieldError::new("/items", "must be an array"));
            return None;
        }
    };
    if items.is_empty() {
        errors.push(FieldError::new("/items", "must contain at least one item"));
        return None;
    }
    if items.len() > MAX_LINES {
        errors.push(FieldError::new(
            "/items",
            format!("must contain at most {MAX_LINES} items"),
        ));
        return None;
    }

    let before = errors.len();
    let mut lines: Vec<OrderLine> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(item) = item else {
            errors.push(FieldError::new(format!("/items/{i}"), "must be an object"));
            continue;
        };
        for name in item.keys() {
            if name != "sku" && name != "quantity" {
                errors.push(FieldError::new(
                    format!("/items/{i}/{}", escape_pointer(name)),
                    "is not a known field (expected sku, quantity)",
                ));
            }
        }
        let product = match item.get("sku") {
            None => {
                errors.push(FieldError::new(format!("/items/{i}/sku"), "is required"));
                None
            }
            Some(Value::String(sku)) => match catalogue::find(sku) {
                Some(p) if lines.iter().any(|l| l.sku == p.sku) => {
                    errors.push(FieldError::new(
                        format!("/items/{i}/sku"),
                        "appears more than once; put the total in one item",
                    ));
                    None
                }
                Some(p) => Some(p),
                None => {
                    errors.push(FieldError::new(
                        format!("/items/{i}/sku"),
                        format!("unknown SKU {sku:?}"),
                    ));
                    None
                }
            },
            Some(_) => {
                errors.push(FieldError::new(
                    format!("/items/{i}/sku"),
                    "must be a string",
                ));
                None
            }
        };
        let quantity = match item.get("quantity") {
            None => {
                errors.push(FieldError::new(
                    format!("/items/{i}/quantity"),
                    "is required",
                ));
                None
            }
            Some(q) => match q.as_u64() {
                Some(q) if (1..=MAX_QUANTITY).contains(&q) => Some(q as u32),
                _ => {
                    errors.push(FieldError::new(
                        format!("/items/{i}/quantity"),
                        format!("must be an integer from 1 to {MAX_QUANTITY}"),
                    ));
                    None
                }
            },
        };
        if let (Some(product), Some(quantity)) = (product, quantity) {
            lines.push(OrderLine {
                sku: product.sku.to_owned(),
                name: product.name.to_owned(),
                quantity,
                unit_price_minor: product.price_minor,
            });
        }
    }
    (errors.len() == before).then_some(lines)
}

fn parse_card(
    card: Option<&Value>,
    today: NaiveDate,
    errors: &mut Vec<FieldError>,
) -> Option<ValidCard> {
    let card = match card {
        None => {
            errors.push(FieldError::new("/card", "is required"));
            return None;
        }
        Some(Value::Object(card)) => card,
        Some(_) => {
            errors.push(FieldError::new("/card", "must be an object"));
            return None;
        }
    };
    // A field of the wrong type is reported once, as such, not also as "is required".
    let mut wrong_type: Vec<FieldError> = Vec::new();
    let mut text = |name: &str| match card.get(name) {
        Some(Value::String(s)) => Some(s.as_str()),
        None => None,
        Some(_) => {
            wrong_type.push(FieldError::new(format!("/card/{name}"), "must be a string"));
            None
        }
    };
    let (number, expiry, cvc) = (text("number"), text("expiry"), text("cvc"));
    let result = validate_card(number, expiry, cvc, today);
    let card_errors = result.as_ref().err().cloned().unwrap_or_default();
    let reported_as_wrong_type = |e: &FieldError| wrong_type.iter().any(|w| w.pointer == e.pointer);
    let remaining: Vec<FieldError> = card_errors
        .into_iter()
        .filter(|e| !reported_as_wrong_type(e))
        .collect();
    errors.extend(wrong_type.iter().cloned());
    errors.extend(remaining);
    result.ok()
}

/// `POST /api/admin/stock/{sku}`: `{"add": n}` (n a non-zero integer within
/// ±[`crate::stock::MAX_ADJUSTMENT`]; negative removes units) or `{"set": n}` (n from 0
/// to [`crate::stock::MAX_LEVEL`]).
// The problem is the answer itself, built once per request: boxing it would buy nothing.
#[allow(clippy::result_large_err)]
pub fn parse_stock_adjustment(body: &[u8]) -> Result<crate::stock::StockChange, Problem> {
    use crate::stock::{StockChange, MAX_ADJUSTMENT, MAX_LEVEL};
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Problem::malformed_json(e.to_string()))?;
    let field =
        |pointer: &str, detail: String| Problem::validation(vec![FieldError::new(pointer, detail)]);
    let Some(object) = value.as_object() else {
        return Err(field(
            "",
            "must be an object like {\"add\": 10} or {\"set\": 100}".to_owned(),
        ));
    };
    if let Some(unknown) = object.keys().find(|k| !matches!(k.as_str(), "add" | "set")) {
        return Err(field(
            &format!("/{}", escape_pointer(unknown)),
            "unknown field".to_owned(),
        ));
    }
    match (object.get("add"), object.get("set")) {
        (Some(add), None) => match add.as_i64() {
            Some(n) if n != 0 && (-MAX_ADJUSTMENT..=MAX_ADJUSTMENT).contains(&n) => {
                Ok(StockChange::Add(n))
            }
            _ => Err(field(
                "/add",
                format!("must be a non-zero integer from -{MAX_ADJUSTMENT} to {MAX_ADJUSTMENT}"),
            )),
        },
        (None, Some(set)) => match set.as_i64() {
            Some(n) if (0..=MAX_LEVEL).contains(&n) => Ok(StockChange::Set(n)),
            _ => Err(field(
                "/set",
                format!("must be an integer from 0 to {MAX_LEVEL}"),
            )),
        },
        (Some(_), Some(_)) => Err(field("/set", "give either add or set, not both".to_owned())),
        (None, None) => Err(field("/add", "is required (or set)".to_owned())),
    }
}

/// A deliberately simple syntax check: one `@`, a non-empty local part without spaces,
/// and a domain of dot-separated labels with a dot in it. Deliverability is the mail
/// provider's job.
pub fn validate_email(raw: &str) -> Result<(), &'static str> {
    let email = raw.trim();
    if email.is_empty() {
        return Err("must not be empty");
    }
    // Invisible and direction-changing characters make an address that reads as
    // another (U+202E reverses what follows): refused, never passed to the mail API.
    if email.chars().any(is_format_character) {
        return Err("contains an invisible or direction-changing character");
    }
    if email.len() > MAX_EMAIL_LEN {
        return Err("is too long (at most 254 characters)");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("is not an email address (missing @)");
    };
    if local.is_empty() || local.len() > 64 {
        return Err("is not an email address (bad local part)");
    }
    if local
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>()[]\\,;:@\"".contains(c))
    {
        return Err("is not an email address (invalid character before @)");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err("is not an email address (invalid domain)");
    }
    Ok(())
}

/// Unicode's format characters (general category Cf): zero-width spaces and joiners,
/// bidirectional controls, the byte-order mark, tag characters and their kin.
fn is_format_character(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// RFC 6901 escaping of a member name inside a JSON Pointer.
fn escape_pointer(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    #[test]
    fn stock_adjustments_name_the_field_at_fault() {
        use crate::stock::StockChange;
        assert_eq!(
            super::parse_stock_adjustment(br#"{"add": -5}"#).unwrap(),
            StockChange::Add(-5)
        );
        assert_eq!(
            super::parse_stock_adjustment(br#"{"set": 0}"#).unwrap(),
            StockChange::Set(0)
        );
        for (bad, pointer) in [
            (&br#"{"add": 0}"#[..], "/add"),
            (br#"{"add": 1.5}"#, "/add"),
            (br#"{"add": "3"}"#, "/add"),
            (br#"{"add": 1000001}"#, "/add"),
            (br#"{}"#, "/add"),
            (br#"{"set": -1}"#, "/set"),
            (br#"{"set": 1000000001}"#, "/set"),
            (br#"{"add": 1, "set": 2}"#, "/set"),
            (br#"{"add": 1, "sku/x": 2}"#, "/sku~1x"),
            (br#"[1]"#, ""),
        ] {
            let problem = super::parse_stock_adjustment(bad).unwrap_err();
            assert_eq!(problem.status, 422, "{bad:?}");
            assert_eq!(problem.errors[0].pointer, pointer, "{bad:?}");
        }
        assert_eq!(super::parse_stock_adjustment(b"{").unwrap_err().status, 400);
    }

    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn fingerprint_of(body: &serde_json::Value) -> String {
        let today = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
        match parse_order_request(body.to_string().as_bytes(), today) {
            Ok(order) => order.fingerprint,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn body(number: &str, cvc: &str, expiry: &str, quantity: u32) -> serde_json::Value {
        json!({
            "email": "ada@example.com",
            "items": [{"sku": "SPIN-MUG", "quantity": quantity}],
            "card": {"number": number, "expiry": expiry, "cvc": cvc}
        })
    }

    /// The fingerprint is kept in the idempotency record: nothing in it may help recover
    /// the card number or the CVC (an unkeyed hash of the whole body would let the CVC
    /// be guessed in 10,000 tries).
    #[test]
    fn the_fingerprint_leaves_out_the_card_number_and_cvc() {
        let base = fingerprint_of(&body("4242 4242 4242 4242", "123", "12/30", 1));
        assert_eq!(
            base,
            fingerprint_of(&body("4242424242424242", "999", "12/2030", 1))
        );
        assert_ne!(
            base,
            fingerprint_of(&body("4242 4242 4242 4242", "123", "11/30", 1))
        );
        assert_ne!(
            base,
            fingerprint_of(&body("4242 4242 4242 4242", "123", "12/30", 2))
        );
        assert_ne!(
            base,
            fingerprint_of(&body("5555 5555 5555 4444", "123", "12/30", 1))
        );
    }

    #[test]
    fn invisible_and_bidi_characters_in_an_email_are_refused() {
        for bad in [
            "ada\u{200B}@example.com",
            "ada@exa\u{202E}moc.elpmaxe",
            "\u{2066}ada@example.com",
            "ada@example.com\u{FEFF}",
            "a\u{00AD}da@example.com",
        ] {
            assert!(validate_email(bad).is_err(), "{bad:?}");
        }
        assert!(validate_email("ada@example.com").is_ok());
        assert!(validate_email("zoë@example.com").is_ok());
    }

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()
    }

    fn good() -> Value {
        json!({
            "email": "ada@example.com",
            "items": [{"sku": "SPIN-MUG", "quantity": 2}, {"sku": "STICKER-PACK", "quantity": 1}],
            "card": {"number": "4242 4242 4242 4242", "expiry": "12/30", "cvc": "123"}
        })
    }

    fn parse(v: &Value) -> Result<ValidOrder, RequestError> {
        parse_order_request(&serde_json::to_vec(v).unwrap(), today())
    }

    fn invalid_pointers(v: &Value) -> Vec<String> {
        match parse(v) {
            Err(RequestError::Invalid(errors)) => errors.into_iter().map(|e| e.pointer).collect(),
            Err(other) => panic!("expected field errors, got {other:?}"),
            Ok(_) => vec![],
        }
    }

    #[test]
    fn a_good_order_is_priced_from_the_catalogue() {
        let order = parse(&good()).ok().unwrap();
        assert_eq!(order.email, "ada@example.com");
        assert_eq!(order.lines.len(), 2);
        assert_eq!(order.total_minor(), 2 * 1_200 + 400);
        assert_eq!(order.card.summary().last4, "4242");
    }

    #[test]
    fn malformed_json_is_a_400_not_a_field_error() {
        let err = parse_order_request(b"{\"email\": ", today()).err().unwrap();
        assert!(matches!(err, RequestError::Malformed(_)));
        assert_eq!(err.to_problem().status, 400);
        assert_eq!(
            parse_order_request(b"[]", today())
                .err()
                .unwrap()
                .to_problem()
                .status,
            422
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut v = good();
        v["items"][0]["sku"] = json!("NOPE");
        assert_eq!(invalid_pointers(&v), ["/items/0/sku"]);

        let mut v = good();
        v["items"][1]["quantity"] = json!(0);
        assert_eq!(invalid_pointers(&v), ["/items/1/quantity"]);

        let mut v = good();
        v["items"][1]["quantity"] = json!(MAX_QUANTITY + 1);
        assert_eq!(invalid_pointers(&v), ["/items/1/quantity"]);

        let mut v = good();
        v["items"][1]["quantity"] = json!(1.5);
        assert_eq!(invalid_pointers(&v), ["/items/1/quantity"]);

        let mut v = good();
        v["email"] = json!("not-an-email");
        assert_eq!(invalid_pointers(&v), ["/email"]);

        let mut v = good();
        v["card"]["cvc"] = json!(123);
        assert_eq!(invalid_pointers(&v), ["/card/cvc"]);

        let mut v = good();
        v["coupon"] = json!("FREE");
        assert_eq!(invalid_pointers(&v), ["/coupon"]);

        let mut v = good();
        v["items"] = json!([]);
        assert_eq!(invalid_pointers(&v), ["/items"]);

        let mut v = good();
        v["items"][1]["sku"] = json!("SPIN-MUG");
        assert_eq!(invalid_pointers(&v), ["/items/1/sku"]);

        assert_eq!(invalid_pointers(&json!({})), ["/email", "/items", "/card"]);
    }

    #[test]
    fn email_syntax() {
        for ok in [
            "a@b.co",
            "first.last+tag@sub.example.org",
            " ada@example.com ",
        ] {
            assert!(validate_email(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@example.com",
            "a@exa mple.com",
            "a@-x.com",
            "a@x..com",
            "a@@x.com",
        ] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
        assert!(validate_email(&format!("{}@x.com", "a".repeat(65))).is_err());
    }

    proptest! {
        /// Arbitrary bytes never panic; they are a 400 or a 422, never an accepted order.
        #[test]
        fn arbitrary_bodies_are_refused_cleanly(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let result = parse_order_request(&body, today());
            prop_assert!(result.is_err());
        }

        /// Any quantity outside 1..=MAX is reported against that item's quantity.
        #[test]
        fn quantities_outside_the_range_name_the_item(q in prop_oneof![Just(0i64), (MAX_QUANTITY as i64 + 1)..10_000, -10_000i64..0]) {
            let mut v = good();
            v["items"][0]["quantity"] = json!(q);
            prop_assert_eq!(invalid_pointers(&v), vec!["/items/0/quantity".to_string()]);
        }
    }
}
