//! Logging a run of the same failure once: its first occurrence is logged, the rest are
//! only counted, and the end of the run is logged with its size.

/// Tracks one kind of repeated failure (refused connections, failed accepts).
#[derive(Debug, Default)]
pub struct Burst {
    in_burst: u64,
}

impl Burst {
    /// Records a failure; true if it starts a burst (the one to log).
    pub fn failed(&mut self) -> bool {
        self.in_burst += 1;
        self.in_burst == 1
    }

    /// Records a success; the size of the burst it ended, if any.
    pub fn succeeded(&mut self) -> Option<u64> {
        (self.in_burst > 0).then(|| std::mem::take(&mut self.in_burst))
    }
}

#[cfg(test)]
mod tests {
    use super::Burst;

    #[test]
    fn a_burst_is_reported_at_its_start_and_its_end_only() {
        let mut burst = Burst::default();
        assert_eq!(burst.succeeded(), None);
        assert!(burst.failed());
        assert!(!burst.failed());
        assert!(!burst.failed());
        assert_eq!(burst.succeeded(), Some(3));
        assert_eq!(burst.succeeded(), None);
        assert!(burst.failed(), "a new burst is reported again");
        assert_eq!(burst.succeeded(), Some(1));
    }
}
