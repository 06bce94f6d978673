//! Every Redis key and pub/sub topic cluster mode uses, in one place. All start with
//! `--redis-prefix` and a colon (so prefixes `ep` and `ep-2` never meet); every key of one
//! stream carries the stream in a hash tag (`PREFIX:{c:news}:…`), so the keys a script touches
//! together share one Redis Cluster slot.
//!
//! | name                      | type    | holds                                              |
//! |---------------------------|---------|----------------------------------------------------|
//! | `P:{c:news}:meta`         | hash    | `epoch` (decimal), `seq` (the top), `run` (run id)  |
//! | `P:{c:news}:log`          | stream  | entries `SEQ-0`, field `d` = the message's `data`  |
//! | `P:{c:news}:idem:KEY`     | string  | `SEQ EPOCH`, the publish's answer, for 5 minutes   |
//! | `P:{c:news}` (topic)      | pub/sub | `SEQ EPOCH DATA` per publish                       |
//! | `P:control`               | stream  | `type broadcast data …` / `type disconnect user …` |
//! | `P:node:NAME`             | string  | `TTL_MS INFO`, expiring after `TTL_MS`             |
//! | `P:nodes`                 | set     | node names (pruned of expired entries on read)     |
//! | `P:probe:NAME` (topic)    | pub/sub | the pub/sub link's liveness probe (never published) |

use super::ops::StreamKey;

/// The names of one prefix's keys and topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `PREFIX:`, with its colon.
    prefix: String,
}

impl Keys {
    /// The names under `prefix` (`--redis-prefix`, without the colon).
    #[must_use]
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: format!("{prefix}:"),
        }
    }

    /// `PREFIX:{c:news}:meta`: the stream's hash of `epoch`, `seq` and `run`.
    #[must_use]
    pub fn meta(&self, stream: &StreamKey) -> String {
        format!("{}{{{stream}}}:meta", self.prefix)
    }

    /// `PREFIX:{c:news}:log`: the stream's history, a Redis stream with ids `SEQ-0`.
    #[must_use]
    pub fn log(&self, stream: &StreamKey) -> String {
        format!("{}{{{stream}}}:log", self.prefix)
    }

    /// `PREFIX:{c:news}:idem:KEY`: a publish's answer under its idempotency key.
    #[must_use]
    pub fn idempotency(&self, stream: &StreamKey, key: &str) -> String {
        format!("{}{{{stream}}}:idem:{key}", self.prefix)
    }

    /// `PREFIX:{c:news}`: the stream's pub/sub topic.
    #[must_use]
    pub fn topic(&self, stream: &StreamKey) -> String {
        format!("{}{{{stream}}}", self.prefix)
    }

    /// The stream a topic made by [`Keys::topic`] names; `None` for any other topic.
    #[must_use]
    pub fn stream_of_topic(&self, topic: &str) -> Option<StreamKey> {
        let inner = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('{')?
            .strip_suffix('}')?;
        StreamKey::parse(inner)
    }

    /// `PREFIX:control`: the control stream (broadcasts, disconnects).
    #[must_use]
    pub fn control(&self) -> String {
        format!("{}control", self.prefix)
    }

    /// `PREFIX:node:NAME`: a node's heartbeat entry.
    #[must_use]
    pub fn node(&self, name: &str) -> String {
        format!("{}node:{name}", self.prefix)
    }

    /// `PREFIX:nodes`: the set of node names that sent a heartbeat.
    #[must_use]
    pub fn nodes(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// `PREFIX:probe:NAME`: the topic the pub/sub link of node `name` subscribes again to
    /// check that its connection is alive.
    #[must_use]
    pub fn probe(&self, name: &str) -> String {
        format!("{}probe:{name}", self.prefix)
    }

    /// `PREFIX:inbox:NAME`: the topic node `name` listens on for answers addressed to it
    /// (other nodes' presence lists).
    #[must_use]
    pub fn inbox(&self, name: &str) -> String {
        format!("{}inbox:{name}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_share_a_hash_tag() {
        let k = Keys::new("P");
        let s = StreamKey::channel("news");
        assert_eq!(k.meta(&s), "P:{c:news}:meta");
        assert_eq!(k.log(&s), "P:{c:news}:log");
        assert_eq!(k.idempotency(&s, "abc"), "P:{c:news}:idem:abc");
        assert_eq!(k.topic(&s), "P:{c:news}");
        let u = StreamKey::user("603577");
        assert_eq!(k.meta(&u), "P:{u:603577}:meta");
    }

    #[test]
    fn node_wide_names() {
        let k = Keys::new("ep-2");
        assert_eq!(k.control(), "ep-2:control");
        assert_eq!(k.node("a"), "ep-2:node:a");
        assert_eq!(k.nodes(), "ep-2:nodes");
        assert_eq!(k.probe("a"), "ep-2:probe:a");
    }

    #[test]
    fn topics_parse_back_only_under_their_prefix() {
        let k = Keys::new("ep");
        let s = StreamKey::user("x y");
        assert_eq!(k.stream_of_topic(&k.topic(&s)), Some(s.clone()));
        assert_eq!(Keys::new("ep-2").stream_of_topic(&k.topic(&s)), None);
        assert_eq!(k.stream_of_topic("ep:probe:a"), None);
        assert_eq!(k.stream_of_topic("ep:{c:}"), None);
        assert_eq!(k.stream_of_topic("ep:{x:news}"), None);
    }
}
