//! Time for the control plane: one [`Clock`] handle that reads the system clock in production
//! and a [`ManualClock`] that tests set and advance, so rotation, proposal expiry, CRL age and
//! in-use-until decisions can be checked without sleeping. Also the RFC 3339 text form that
//! every recorded time uses.
//!
//! This module only tells the time; it must never sleep, schedule work or read any other
//! state.

use std::sync::{Arc, Mutex};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Where the time comes from. Cheap to clone; clones share their source.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<ManualClock>,
}

impl Clock {
    /// The system clock (UTC).
    pub fn system() -> Self {
        Clock { manual: None }
    }

    /// The current time.
    pub fn now(&self) -> OffsetDateTime {
        match &self.manual {
            Some(manual) => manual.now(),
            None => OffsetDateTime::now_utc(),
        }
    }
}

impl From<ManualClock> for Clock {
    fn from(manual: ManualClock) -> Self {
        Clock {
            manual: Some(manual),
        }
    }
}

/// A clock that stands still until it is set or advanced (tests and simulations). Clones,
/// and the [`Clock`]s made from them, share one time.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<Mutex<OffsetDateTime>>,
}

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// A [`Clock`] handle that reads this clock.
    pub fn clock(&self) -> Clock {
        Clock::from(self.clone())
    }

    pub fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set(&self, to: OffsetDateTime) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }

    pub fn advance(&self, by: time::Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }
}

/// `t` as RFC 3339 text, the form every recorded time takes.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Reads RFC 3339 text; `None` when it is not.
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_its_handles_follow() {
        let manual = ManualClock::new(datetime!(2030-01-01 00:00 UTC));
        let clock = manual.clock();
        assert_eq!(clock.now(), datetime!(2030-01-01 00:00 UTC));
        manual.advance(time::Duration::hours(25));
        assert_eq!(clock.clone().now(), datetime!(2030-01-02 01:00 UTC));
        manual.set(datetime!(2031-06-01 12:00 UTC));
        assert_eq!(clock.now(), datetime!(2031-06-01 12:00 UTC));
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = datetime!(2030-01-01 10:20:30 UTC);
        assert_eq!(rfc3339(t), "2030-01-01T10:20:30Z");
        assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn the_system_clock_is_close_to_now() {
        let before = OffsetDateTime::now_utc();
        let t = Clock::system().now();
        assert!(t >= before && t <= OffsetDateTime::now_utc());
    }
}
