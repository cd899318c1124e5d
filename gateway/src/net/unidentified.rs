//! Places for AudioSocket connections that have not sent their ID yet: bounded overall
//! and per source address, so connections that never identify themselves cannot crowd
//! out real calls. A place is held by the session and freed when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnidentifiedLimit {
    /// `audiosocket.max_unidentified`.
    Overall,
    /// `audiosocket.max_unidentified_per_source`.
    PerSource,
}

impl std::fmt::Display for UnidentifiedLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnidentifiedLimit::Overall => "audiosocket.max_unidentified",
            UnidentifiedLimit::PerSource => "audiosocket.max_unidentified_per_source",
        })
    }
}

/// Places for connections that have not sent their ID yet, overall and per address.
#[derive(Clone)]
pub struct Unidentified {
    inner: Arc<UnidentifiedInner>,
}

struct UnidentifiedInner {
    overall: usize,
    per_source: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place among the unidentified; freed when dropped (the ID arrived,
/// or the connection ended).
pub struct UnidentifiedPlace {
    inner: Arc<UnidentifiedInner>,
    source: IpAddr,
}

impl Unidentified {
    /// Room for `overall` unidentified connections, `per_source` from any one address.
    pub fn new(overall: usize, per_source: usize) -> Unidentified {
        Unidentified {
            inner: Arc::new(UnidentifiedInner {
                overall,
                per_source,
                held: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Takes a place for a connection from `source`, if one is free.
    pub fn admit(&self, source: IpAddr) -> Result<UnidentifiedPlace, UnidentifiedLimit> {
        let mut held = self
            .inner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total: usize = held.values().sum();
        if total >= self.inner.overall {
            return Err(UnidentifiedLimit::Overall);
        }
        let mine = held.entry(source).or_insert(0);
        if *mine >= self.inner.per_source {
            return Err(UnidentifiedLimit::PerSource);
        }
        *mine += 1;
        Ok(UnidentifiedPlace {
            inner: Arc::clone(&self.inner),
            source,
        })
    }
}

impl Drop for UnidentifiedPlace {
    fn drop(&mut self) {
        let mut held = self
            .inner
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_overall_and_per_source_and_freed_on_drop() {
        let pool = Unidentified::new(3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let c: IpAddr = [127, 0, 0, 3].into();
        let first = pool.admit(a).unwrap();
        let _second = pool.admit(a).unwrap();
        assert_eq!(pool.admit(a).err(), Some(UnidentifiedLimit::PerSource));
        let _third = pool.admit(b).unwrap();
        assert_eq!(pool.admit(c).err(), Some(UnidentifiedLimit::Overall));
        drop(first);
        let _again = pool.admit(a).unwrap();
        assert_eq!(pool.admit(c).err(), Some(UnidentifiedLimit::Overall));
    }
}
