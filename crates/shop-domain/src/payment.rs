//! Simulated card payments: validation (Luhn, expiry, CVC) and a test processor.
//!
//! Only the last four digits ever leave this module: [`CardSummary`] is what is stored
//! and logged; the full number is dropped as soon as the payment is decided.
//!
//! Test cards (as in common payment-provider test modes):
//! - `4242 4242 4242 4242`: approved, captured at fulfilment.
//! - `4000 0000 0000 0002`: declined at checkout (HTTP 402).
//! - `4000 0000 0000 0341`: approved at checkout, but capture fails at fulfilment, so the
//!   order ends `failed` after it was accepted: the case a customer must be told about.
//! - any other valid number: approved.

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::problem::FieldError;

const DECLINED_CARD: &str = "4000000000000002";
const CAPTURE_FAILS_CARD: &str = "4000000000000341";

/// What may be stored about a card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardSummary {
    pub brand: String,
    pub last4: String,
}

/// The outcome of authorising a card at checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorisation {
    /// The order may be accepted. `capture_fails` is the simulated processor's later answer.
    Approved {
        card: CardSummary,
        capture_fails: bool,
    },
    Declined {
        card: CardSummary,
        reason: String,
    },
}

/// A card that passed validation. Deliberately not `Debug`/`Serialize`: it must not be
/// printed or stored.
pub struct ValidCard {
    digits: String,
    /// (year, month) of expiry.
    expiry: (i32, u32),
}

impl ValidCard {
    /// What identifies this card in a request fingerprint: what the shop keeps of it
    /// (brand, last four digits) and its expiry; never the number or the CVC.
    pub fn fingerprint_part(&self) -> serde_json::Value {
        let summary = self.summary();
        serde_json::json!({
            "brand": summary.brand,
            "last4": summary.last4,
            "expiry": format!("{:04}-{:02}", self.expiry.0, self.expiry.1),
        })
    }

    pub fn summary(&self) -> CardSummary {
        CardSummary {
            brand: brand(&self.digits).to_owned(),
            last4: self.digits[self.digits.len() - 4..].to_owned(),
        }
    }

    /// The simulated processor's decision.
    pub fn authorise(self) -> Authorisation {
        let card = self.summary();
        match self.digits.as_str() {
            DECLINED_CARD => Authorisation::Declined {
                card,
                reason: "card_declined: the card issuer declined the payment".into(),
            },
            other => Authorisation::Approved {
                card,
                capture_fails: other == CAPTURE_FAILS_CARD,
            },
        }
    }
}

fn brand(digits: &str) -> &'static str {
    match digits.as_bytes()[0] {
        b'4' => "visa",
        b'5' | b'2' => "mastercard",
        b'3' => "amex",
        _ => "card",
    }
}

/// The Luhn checksum over a string of ASCII digits.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// Validates the `card` object fields. `today` decides whether the expiry has passed.
/// Errors point into the request body under `/card`.
pub fn validate_card(
    number: Option<&str>,
    expiry: Option<&str>,
    cvc: Option<&str>,
    today: NaiveDate,
) -> Result<ValidCard, Vec<FieldError>> {
    let mut errors = Vec::new();

    let digits = match number {
        None => {
            errors.push(FieldError::new("/card/number", "is required"));
            None
        }
        Some(raw) => {
            // Spaces and dashes are how people write card numbers; nothing else is allowed.
            if !raw
                .chars()
                .all(|c| c.is_ascii_digit() || c == ' ' || c == '-')
            {
                errors.push(FieldError::new(
                    "/card/number",
                    "must contain only digits, spaces and dashes",
                ));
                None
            } else {
                let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
                if !(12..=19).contains(&digits.len()) {
                    errors.push(FieldError::new("/card/number", "must have 12 to 19 digits"));
                    None
                } else if !luhn_valid(&digits) {
                    errors.push(FieldError::new(
                        "/card/number",
                        "is not a valid card number (checksum)",
                    ));
                    None
                } else {
                    Some(digits)
                }
            }
        }
    };

    let expires = match expiry {
        None => {
            errors.push(FieldError::new("/card/expiry", "is required (MM/YY)"));
            None
        }
        Some(raw) => match parse_expiry(raw) {
            None => {
                errors.push(FieldError::new(
                    "/card/expiry",
                    "must be MM/YY or MM/YYYY with a month from 01 to 12",
                ));
                None
            }
            Some((year, month)) => {
                // A card is valid through the last day of its expiry month.
                if (year, month) < (today.year(), today.month()) {
                    errors.push(FieldError::new("/card/expiry", "the card has expired"));
                }
                Some((year, month))
            }
        },
    };

    match cvc {
        None => errors.push(FieldError::new("/card/cvc", "is required")),
        Some(raw) if !(3..=4).contains(&raw.len()) || !raw.bytes().all(|b| b.is_ascii_digit()) => {
            errors.push(FieldError::new("/card/cvc", "must be 3 or 4 digits"))
        }
        Some(_) => {}
    }

    match (digits, expires) {
        (Some(digits), Some(expiry)) if errors.is_empty() => Ok(ValidCard { digits, expiry }),
        _ => Err(errors),
    }
}

fn parse_expiry(raw: &str) -> Option<(i32, u32)> {
    let (mm, yy) = raw.trim().split_once('/')?;
    let (mm, yy) = (mm.trim(), yy.trim());
    if mm.len() != 2 || !mm.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let month: u32 = mm.parse().ok()?;
    if !(1..=12).contains(&month) || !yy.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = match yy.len() {
        2 => 2000 + yy.parse::<i32>().ok()?,
        4 => yy.parse().ok()?,
        _ => return None,
    };
    Some((year, month))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()
    }

    fn check(number: &str, expiry: &str, cvc: &str) -> Result<ValidCard, Vec<FieldError>> {
        validate_card(Some(number), Some(expiry), Some(cvc), today())
    }

    fn pointers(r: Result<ValidCard, Vec<FieldError>>) -> Vec<String> {
        match r {
            Ok(_) => vec![],
            Err(e) => e.into_iter().map(|e| e.pointer).collect(),
        }
    }

    #[test]
    fn test_cards_pass_luhn() {
        for n in [
            "4242424242424242",
            DECLINED_CARD,
            CAPTURE_FAILS_CARD,
            "5555555555554444",
        ] {
            assert!(luhn_valid(n), "{n}");
        }
        assert!(!luhn_valid("4242424242424241"));
    }

    #[test]
    fn approved_declined_and_capture_failing_cards() {
        let approved = check("4242 4242 4242 4242", "12/30", "123").ok().unwrap();
        assert_eq!(
            approved.authorise(),
            Authorisation::Approved {
                card: CardSummary {
                    brand: "visa".into(),
                    last4: "4242".into()
                },
                capture_fails: false
            }
        );
        let declined = check("4000-0000-0000-0002", "01/2027", "1234")
            .ok()
            .unwrap();
        assert!(
            matches!(declined.authorise(), Authorisation::Declined { card, .. } if card.last4 == "0002")
        );
        let later = check("4000000000000341", "11/26", "999").ok().unwrap();
        assert!(matches!(
            later.authorise(),
            Authorisation::Approved {
                capture_fails: true,
                ..
            }
        ));
    }

    #[test]
    fn expiry_is_inclusive_of_the_current_month() {
        assert!(check("4242424242424242", "11/26", "123").is_ok());
        assert_eq!(
            pointers(check("4242424242424242", "10/26", "123")),
            ["/card/expiry"]
        );
        for bad in ["13/30", "00/30", "1/30", "12-30", "12/3", "ab/cd", "12/300"] {
            assert_eq!(
                pointers(check("4242424242424242", bad, "123")),
                ["/card/expiry"],
                "{bad}"
            );
        }
    }

    #[test]
    fn number_and_cvc_errors_name_their_field() {
        assert_eq!(
            pointers(check("4242424242424241", "12/30", "123")),
            ["/card/number"]
        );
        assert_eq!(
            pointers(check("4242abcd", "12/30", "123")),
            ["/card/number"]
        );
        assert_eq!(
            pointers(check("42424242", "12/30", "123")),
            ["/card/number"]
        );
        assert_eq!(
            pointers(check("4242424242424242", "12/30", "12")),
            ["/card/cvc"]
        );
        assert_eq!(
            pointers(check("4242424242424242", "12/30", "12a")),
            ["/card/cvc"]
        );
        assert_eq!(
            pointers(validate_card(None, None, None, today())),
            ["/card/number", "/card/expiry", "/card/cvc"]
        );
    }

    proptest! {
        /// Changing any single digit of a valid number breaks the checksum.
        #[test]
        fn luhn_detects_single_digit_errors(pos in 0usize..16, delta in 1u8..10) {
            let mut digits = b"4242424242424242".to_vec();
            digits[pos] = b'0' + (digits[pos] - b'0' + delta) % 10;
            prop_assert!(!luhn_valid(std::str::from_utf8(&digits).unwrap()));
        }

        /// Whatever the input, validation returns (never panics) and a summary never holds
        /// more than the last four digits.
        #[test]
        fn validation_never_panics_or_leaks(number in ".{0,40}", expiry in ".{0,10}", cvc in ".{0,6}") {
            if let Ok(card) = validate_card(Some(&number), Some(&expiry), Some(&cvc), today()) {
                let s = card.summary();
                prop_assert_eq!(s.last4.len(), 4);
            }
        }
    }
}
