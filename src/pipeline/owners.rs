//! Which instance owns a lead, for `/leads/{id}` on an instance that does not: every member of
//! the group puts its advertised HTTP address in its consumer `client.id`
//! (`leadscore@http://host:port`), and the group's member list (Kafka's DescribeGroups) says
//! which member is assigned which partitions. No coordination of our own: Kafka's view of the
//! group is the truth, read on demand and cached for a moment.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

/// Prefix of the consumer `client.id` before the advertised URL.
pub(crate) const CLIENT_ID_PREFIX: &str = "leadscore@";

/// How long a read of the group's assignment is reused.
const CACHE_FOR: Duration = Duration::from_secs(2);

pub(crate) struct Owners {
    client: BaseConsumer,
    group: String,
    topic: String,
    cache: Mutex<Option<(Instant, BTreeMap<i32, String>)>>,
}

impl Owners {
    /// Looks up owners in `group` by their partitions of `topic` (an input topic).
    pub(crate) fn new(client: BaseConsumer, group: String, topic: String) -> Owners {
        Owners { client, group, topic, cache: Mutex::new(None) }
    }

    /// The advertised URL of the member that owns `partition`, if Kafka knows one.
    pub(crate) fn owner_of(&self, partition: i32) -> Option<String> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = cache.as_ref().is_some_and(|(at, _)| at.elapsed() < CACHE_FOR);
        if !fresh {
            *cache = Some((Instant::now(), self.read_group()));
        }
        cache.as_ref().and_then(|(_, owners)| owners.get(&partition).cloned())
    }

    /// partition → advertised URL, from the group's current members and assignments.
    fn read_group(&self) -> BTreeMap<i32, String> {
        let mut owners = BTreeMap::new();
        let Ok(list) = self.client.fetch_group_list(Some(&self.group), Duration::from_secs(5)) else {
            return owners;
        };
        for group in list.groups() {
            for member in group.members() {
                let Some(url) = member.client_id().strip_prefix(CLIENT_ID_PREFIX) else { continue };
                let Some(assigned) = member.assignment().and_then(parse_assignment) else { continue };
                for (topic, partitions) in assigned {
                    if topic == self.topic {
                        for p in partitions {
                            owners.insert(p, url.to_owned());
                        }
                    }
                }
            }
        }
        owners
    }
}

/// Kafka's consumer protocol assignment (versions 0 to 3 share this prefix): `i16` version,
/// `i32` topic count, each topic an `i16`-length string and an `i32` count of `i32` partitions;
/// user data follows and is ignored.
pub(crate) fn parse_assignment(b: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = b.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let _version = i16::from_be_bytes(take(2)?.try_into().ok()?);
    let topics = i32::from_be_bytes(take(4)?.try_into().ok()?);
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = i16::from_be_bytes(take(2)?.try_into().ok()?);
        let name = std::str::from_utf8(take(len.max(0) as usize)?).ok()?.to_owned();
        let n = i32::from_be_bytes(take(4)?.try_into().ok()?);
        let mut partitions = Vec::with_capacity(n.clamp(0, 1024) as usize);
        for _ in 0..n.max(0) {
            partitions.push(i32::from_be_bytes(take(4)?.try_into().ok()?));
        }
        out.push((name, partitions));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_consumer_protocol_assignment() {
        let mut b = vec![0, 1, 0, 0, 0, 2];
        for (topic, parts) in [("lead-events", vec![0i32, 3]), ("x-repartition", vec![5])] {
            b.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            b.extend_from_slice(topic.as_bytes());
            b.extend_from_slice(&(parts.len() as i32).to_be_bytes());
            for p in parts {
                b.extend_from_slice(&p.to_be_bytes());
            }
        }
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]); // null user data
        assert_eq!(
            parse_assignment(&b),
            Some(vec![("lead-events".to_owned(), vec![0, 3]), ("x-repartition".to_owned(), vec![5])])
        );
        for len in 0..b.len() - 4 {
            let _ = parse_assignment(&b[..len]); // never panics
        }
        assert_eq!(parse_assignment(&b[..5]), None);
    }
}
