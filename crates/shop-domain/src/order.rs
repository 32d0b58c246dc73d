//! The order record and its state machine.
//!
//! ```text
//! status:        accepted ──► confirmed
//!                    └──────► failed { reason }
//! notification:  pending { last_error } ──► sent { provider, message_id }
//!                    └──────────────────► failed { provider, reason }
//! ```
//!
//! Every change is an [`OrderEvent`] applied with [`Order::apply`]. A terminal state is
//! never left, and applying an event that already took effect changes nothing, so a
//! redelivered message, a second replica or a redrive can replay events safely.

use serde::{Deserialize, Serialize};

use crate::payment::CardSummary;

/// One product line of an order, priced when the order was placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price_minor: u64,
}

impl OrderLine {
    pub fn subtotal_minor(&self) -> u64 {
        self.unit_price_minor * u64::from(self.quantity)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OrderStatus {
    /// Stock is reserved and payment authorised; fulfilment has not finished.
    Accepted,
    /// Payment captured; the order will ship.
    Confirmed,
    /// The order will not ship; its stock was given back.
    Failed { reason: String },
}

impl OrderStatus {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, OrderStatus::Accepted)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Notification {
    /// Not sent yet. `last_error` is the latest transient failure, if any.
    Pending { last_error: Option<String> },
    Sent {
        provider: String,
        message_id: Option<String>,
    },
    /// The provider refused the message permanently (e.g. unverified sender).
    Failed { provider: String, reason: String },
}

impl Notification {
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Notification::Pending { .. })
    }
}

/// Everything that can happen to an order after it was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEvent {
    Confirmed,
    Failed {
        reason: String,
    },
    NotificationDelayed {
        reason: String,
    },
    NotificationSent {
        provider: String,
        message_id: Option<String>,
    },
    NotificationFailed {
        provider: String,
        reason: String,
    },
}

/// The stored order. Card data is limited to brand and last four digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub email: String,
    pub lines: Vec<OrderLine>,
    pub total_minor: u64,
    pub currency: String,
    pub card: CardSummary,
    /// The simulated processor will refuse the capture (test card `...0341`).
    pub capture_fails: bool,
    pub status: OrderStatus,
    pub notification: Notification,
    /// Position in the order sequence, used by redrive to find unfinished orders.
    pub sequence: i64,
    /// RFC 3339 UTC timestamps.
    pub created_at: String,
    pub updated_at: String,
    /// The W3C trace the order was placed in (32 hex digits), if it was traced.
    #[serde(default)]
    pub trace_id: Option<String>,
    /// `traceparent` of the span that first published the order: a redrive continues
    /// the order's trace from it.
    #[serde(default)]
    pub traceparent: Option<String>,
}

impl Order {
    /// Applies `event`, returning whether anything changed. Terminal states absorb.
    pub fn apply(&mut self, event: &OrderEvent, at: &str) -> bool {
        let changed = match event {
            OrderEvent::Confirmed if !self.status.is_terminal() => {
                self.status = OrderStatus::Confirmed;
                true
            }
            OrderEvent::Failed { reason } if !self.status.is_terminal() => {
                self.status = OrderStatus::Failed {
                    reason: reason.clone(),
                };
                true
            }
            OrderEvent::NotificationDelayed { reason } => match &self.notification {
                Notification::Pending { last_error } if last_error.as_ref() != Some(reason) => {
                    self.notification = Notification::Pending {
                        last_error: Some(reason.clone()),
                    };
                    true
                }
                _ => false,
            },
            OrderEvent::NotificationSent {
                provider,
                message_id,
            } if !self.notification.is_terminal() => {
                self.notification = Notification::Sent {
                    provider: provider.clone(),
                    message_id: message_id.clone(),
                };
                true
            }
            OrderEvent::NotificationFailed { provider, reason }
                if !self.notification.is_terminal() =>
            {
                self.notification = Notification::Failed {
                    provider: provider.clone(),
                    reason: reason.clone(),
                };
                true
            }
            _ => false,
        };
        if changed {
            self.updated_at = at.to_owned();
        }
        changed
    }

    /// Nothing is left to do for this order: final status and final notification.
    pub fn is_finished(&self) -> bool {
        self.status.is_terminal() && self.notification.is_terminal()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample_order() -> Order {
        Order {
            id: "ord_00000000000000000000000000000001".into(),
            email: "ada@example.com".into(),
            lines: vec![OrderLine {
                sku: "SPIN-MUG".into(),
                name: "Spin enamel mug".into(),
                quantity: 2,
                unit_price_minor: 1_200,
            }],
            total_minor: 2_400,
            currency: "EUR".into(),
            card: CardSummary {
                brand: "visa".into(),
                last4: "4242".into(),
            },
            capture_fails: false,
            status: OrderStatus::Accepted,
            notification: Notification::Pending { last_error: None },
            sequence: 1,
            created_at: "2026-11-24T00:00:00Z".into(),
            updated_at: "2026-11-24T00:00:00Z".into(),
            trace_id: None,
            traceparent: None,
        }
    }

    fn event() -> impl Strategy<Value = OrderEvent> {
        let text = prop::sample::select(vec!["a", "b"]).prop_map(String::from);
        prop_oneof![
            Just(OrderEvent::Confirmed),
            text.clone()
                .prop_map(|reason| OrderEvent::Failed { reason }),
            text.clone()
                .prop_map(|reason| OrderEvent::NotificationDelayed { reason }),
            text.clone().prop_map(|p| OrderEvent::NotificationSent {
                provider: p,
                message_id: Some("m".into())
            }),
            text.prop_map(|reason| OrderEvent::NotificationFailed {
                provider: "resend".into(),
                reason
            }),
        ]
    }

    fn run(events: &[OrderEvent]) -> Order {
        let mut order = sample_order();
        for e in events {
            order.apply(e, "t");
        }
        order
    }

    #[test]
    fn first_terminal_status_wins() {
        let o = run(&[
            OrderEvent::Confirmed,
            OrderEvent::Failed { reason: "x".into() },
        ]);
        assert_eq!(o.status, OrderStatus::Confirmed);
        let o = run(&[
            OrderEvent::Failed { reason: "x".into() },
            OrderEvent::Confirmed,
        ]);
        assert_eq!(o.status, OrderStatus::Failed { reason: "x".into() });
    }

    #[test]
    fn notification_failure_is_kept_apart_from_the_order_status() {
        let o = run(&[
            OrderEvent::Confirmed,
            OrderEvent::NotificationFailed {
                provider: "resend".into(),
                reason: "domain not verified".into(),
            },
        ]);
        assert_eq!(o.status, OrderStatus::Confirmed);
        assert!(
            matches!(o.notification, Notification::Failed { ref reason, .. } if reason == "domain not verified")
        );
        assert!(o.is_finished());
    }

    #[test]
    fn record_round_trips_through_json() {
        let o = run(&[OrderEvent::Confirmed]);
        assert_eq!(Order::from_json(&o.to_json()).unwrap(), o);
        let json: serde_json::Value = serde_json::from_slice(&o.to_json()).unwrap();
        assert_eq!(json["status"]["state"], "confirmed");
        assert_eq!(json["notification"]["state"], "pending");
    }

    proptest! {
        /// Redelivery duplicates events in place: any number of copies of each event gives
        /// the same final state as the original sequence.
        #[test]
        fn duplicated_events_change_nothing(
            events in prop::collection::vec((event(), 1usize..4), 0..12)
        ) {
            let once: Vec<OrderEvent> = events.iter().map(|(e, _)| e.clone()).collect();
            let duplicated: Vec<OrderEvent> = events
                .iter()
                .flat_map(|(e, n)| std::iter::repeat_n(e.clone(), *n))
                .collect();
            prop_assert_eq!(run(&once), run(&duplicated));
        }

        /// Applying an event a second time reports no change.
        #[test]
        fn apply_is_idempotent(prefix in prop::collection::vec(event(), 0..8), e in event()) {
            let mut order = run(&prefix);
            order.apply(&e, "t1");
            let after_first = order.clone();
            prop_assert!(!order.apply(&e, "t2"));
            prop_assert_eq!(order, after_first);
        }

        /// Once terminal, a status or notification never changes again, whatever follows.
        #[test]
        fn terminal_states_absorb(prefix in prop::collection::vec(event(), 0..8), rest in prop::collection::vec(event(), 0..8)) {
            let before = run(&prefix);
            let mut after = before.clone();
            for e in &rest {
                after.apply(e, "t");
            }
            if before.status.is_terminal() {
                prop_assert_eq!(&before.status, &after.status);
            }
            if before.notification.is_terminal() {
                prop_assert_eq!(&before.notification, &after.notification);
            }
        }
    }
}
