//! Restart delays: start small, double on each consecutive failure up to a cap, and
//! start small again once the process has stayed up long enough to count as healthy.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// Up for at least this long: the next failure is a new one, not a consecutive one.
    healthy_after: Duration,
    next: Duration,
}

impl Default for Backoff {
    /// 0.5 s, 1 s, 2 s, ... capped at 30 s; reset after 30 s up.
    fn default() -> Self {
        Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
            Duration::from_secs(30),
        )
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, healthy_after: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            healthy_after,
            next: initial,
        }
    }

    /// The delay before restarting a process that stayed up for `up_for`. The caller
    /// measures `up_for` (zero when it could not even be started), so no clock lives here.
    pub fn delay_after(&mut self, up_for: Duration) -> Duration {
        if up_for >= self.healthy_after {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(delays: &[Duration]) -> Vec<f64> {
        delays.iter().map(Duration::as_secs_f64).collect()
    }

    #[test]
    fn doubles_from_half_a_second_up_to_thirty() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..10)
            .map(|_| backoff.delay_after(Duration::ZERO))
            .collect();
        assert_eq!(
            seconds(&delays),
            [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
        );
    }

    #[test]
    fn resets_once_the_process_stayed_up_long_enough() {
        let mut backoff = Backoff::default();
        // Up for 1 s four times, then 29 s (still consecutive), 30 s (healthy), 2 s.
        let delays: Vec<_> = [1, 1, 1, 1, 29, 30, 2]
            .into_iter()
            .map(|up| backoff.delay_after(Duration::from_secs(up)))
            .collect();
        assert_eq!(seconds(&delays), [0.5, 1.0, 2.0, 4.0, 8.0, 0.5, 1.0]);
    }

    #[test]
    fn thresholds_are_configurable() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(10), ms(25), ms(100));
        let delays: Vec<_> = [0, 0, 0, 99, 100, 0]
            .into_iter()
            .map(|up| backoff.delay_after(ms(up)))
            .collect();
        assert_eq!(delays, [ms(10), ms(20), ms(25), ms(25), ms(10), ms(20)]);
    }
}
