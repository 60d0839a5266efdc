//! A dependency's state as the logs tell it: one line when it goes away,
//! naming its address and the cause, and one when it is back; requests that
//! fail meanwhile add nothing to the log.

use std::sync::Mutex;

/// Whether a dependency answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Up,
    Down,
}

/// One dependency (PostgreSQL, Redis) at one address.
#[derive(Debug)]
pub struct Dependency {
    name: &'static str,
    address: String,
    state: Mutex<State>,
}

impl Dependency {
    /// A dependency assumed up until something fails.
    pub fn new(name: &'static str, address: impl Into<String>) -> Self {
        Dependency {
            name,
            address: address.into(),
            state: Mutex::new(State::Up),
        }
    }

    /// Records a failure to reach it because of `cause`; logs only when it was up.
    pub fn failed(&self, cause: &str) {
        if self.set(State::Down) {
            tracing::warn!(
                dependency = self.name,
                address = %self.address,
                cause,
                "connecting to {} at {}: {cause}",
                self.name,
                self.address,
            );
        } else {
            tracing::debug!(dependency = self.name, cause, "still unreachable");
        }
    }

    /// Records that it answered; logs only when it was down.
    pub fn answered(&self) {
        if self.set(State::Up) {
            tracing::info!(
                dependency = self.name,
                address = %self.address,
                "{} at {} is reachable again",
                self.name,
                self.address,
            );
        }
    }

    /// Whether the last thing known is a failure.
    pub fn is_down(&self) -> bool {
        *self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            == State::Down
    }

    /// Sets the state; whether it changed.
    fn set(&self, to: State) -> bool {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let changed = *state != to;
        *state = to;
        changed
    }
}

/// An I/O error's words without the errno suffix, lowercase first
/// (`Connection refused (os error 111)` becomes `connection refused`).
pub fn io_cause(err: &std::io::Error) -> String {
    plain_cause(&err.to_string())
}

/// An error text as a cause reads in a sentence: without an errno suffix,
/// lowercase first.
pub fn plain_cause(text: &str) -> String {
    let text = text.trim().trim_end_matches('.');
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_of_state_count_and_io_causes_read_as_words() {
        let pg = Dependency::new("PostgreSQL", "127.0.0.1:1");
        assert!(!pg.is_down());
        assert!(pg.set(State::Down));
        assert!(!pg.set(State::Down));
        assert!(pg.is_down());
        assert!(pg.set(State::Up));
        let refused = std::io::Error::from_raw_os_error(111);
        assert!(
            io_cause(&refused).starts_with("connection refused"),
            "{}",
            io_cause(&refused)
        );
        assert!(!io_cause(&refused).contains("os error"));
    }
}
