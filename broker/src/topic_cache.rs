//! [`TopicCache`]: what one publisher (a session) remembers about the few topics it
//! publishes to, so that a client streaming publishes pays for a topic's checks and its
//! subscription lookup once, not per message.
//!
//! Each cache is tied to a *generation* of the shared state its values were computed
//! from (the router's subscriptions, the registry's explicit topics): any change there
//! bumps the generation, and the next lookup at a newer generation empties the cache.
//! It holds at most [`TopicCache::TOPICS`] topics, found by a linear scan of short
//! strings (cheaper here than hashing), replaced in turn when full.

/// Values computed for a few topics at one generation of the state they came from.
#[derive(Debug)]
pub struct TopicCache<V> {
    generation: u64,
    entries: Vec<(Box<str>, V)>,
    next_victim: usize,
}

impl<V> Default for TopicCache<V> {
    fn default() -> Self {
        TopicCache {
            generation: 0,
            entries: Vec::new(),
            next_victim: 0,
        }
    }
}

impl<V> TopicCache<V> {
    /// Topics remembered at once.
    pub const TOPICS: usize = 8;

    /// The value for `topic` at `generation`: the cached one, or `fill`'s (cached only
    /// if it succeeds).
    pub fn get_or_try_insert<E>(
        &mut self,
        generation: u64,
        topic: &str,
        fill: impl FnOnce() -> Result<V, E>,
    ) -> Result<&V, E> {
        if self.generation != generation {
            self.entries.clear();
            self.generation = generation;
        }
        if let Some(at) = self.entries.iter().position(|(t, _)| **t == *topic) {
            return Ok(&self.entries[at].1);
        }
        let entry = (Box::from(topic), fill()?);
        let at = if self.entries.len() < Self::TOPICS {
            self.entries.push(entry);
            self.entries.len() - 1
        } else {
            self.next_victim = (self.next_victim + 1) % Self::TOPICS;
            self.entries[self.next_victim] = entry;
            self.next_victim
        };
        Ok(&self.entries[at].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[test]
    fn fills_once_per_topic_and_generation() {
        let mut cache = TopicCache::default();
        let mut fills = 0;
        let mut get = |cache: &mut TopicCache<String>, generation, topic: &str| {
            *cache
                .get_or_try_insert(generation, topic, || {
                    fills += 1;
                    Ok::<_, Infallible>(format!("{topic}@{generation}"))
                })
                .unwrap()
                == format!("{topic}@{generation}")
        };
        assert!(get(&mut cache, 1, "a"));
        assert!(get(&mut cache, 1, "a"));
        assert!(get(&mut cache, 1, "b"));
        assert!(get(&mut cache, 2, "a"), "a new generation refills");
        assert_eq!(fills, 3);
    }

    #[test]
    fn failures_are_not_cached_and_a_full_cache_replaces_in_turn() {
        let mut cache: TopicCache<usize> = TopicCache::default();
        assert_eq!(cache.get_or_try_insert(0, "bad", || Err("no")), Err("no"));
        assert_eq!(
            cache.get_or_try_insert(0, "bad", || Ok::<_, &str>(1)),
            Ok(&1)
        );
        for i in 0..3 * TopicCache::<usize>::TOPICS {
            let topic = format!("t{i}");
            assert_eq!(
                cache.get_or_try_insert(0, &topic, || Ok::<_, ()>(i)),
                Ok(&i)
            );
            assert_eq!(cache.get_or_try_insert(0, &topic, || Err(())), Ok(&i));
            assert!(cache.entries.len() <= TopicCache::<usize>::TOPICS);
        }
    }
}
