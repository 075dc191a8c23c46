//! The subscription tree: topic filters by level, `+` and `#` as ordinary children, shared
//! subscriptions (`$share/<name>/<filter>`) as groups whose members take turns.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::codec::SubOpts;
use crate::session::Session;

#[derive(Clone)]
pub struct Sub {
    pub session: Arc<Session>,
    pub opts: SubOpts,
}

struct Shared {
    name: Box<str>,
    members: Vec<Sub>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subs: Vec<Sub>,
    shared: Vec<Shared>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }
}

/// A subscriber a message goes to.
pub struct Match {
    pub session: Arc<Session>,
    pub opts: SubOpts,
}

#[derive(Default)]
pub struct TopicTree {
    root: Node,
}

/// Splits `$share/name/filter`.
pub fn split_shared(filter: &str) -> (Option<&str>, &str) {
    if let Some(rest) = filter.strip_prefix("$share/")
        && let Some((name, f)) = rest.split_once('/')
    {
        return (Some(name), f);
    }
    (None, filter)
}

/// Whether a filter is well formed (wildcards whole levels, `#` last, shares named).
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let (share, f) = split_shared(filter);
    if filter.starts_with("$share/")
        && (share.is_none_or(|s| s.is_empty() || s.contains(['+', '#'])) || f.is_empty())
    {
        return false;
    }
    let levels: Vec<&str> = f.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| {
        (!l.contains('#') || (*l == "#" && i == levels.len() - 1)) && (!l.contains('+') || *l == "+")
    })
}

pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

impl TopicTree {
    fn node_mut(&mut self, filter: &str) -> &mut Node {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        node
    }

    /// Adds or replaces `sub.session`'s subscription to `filter` (which may be shared).
    /// Returns true when it is new.
    pub fn subscribe(&mut self, filter: &str, sub: Sub) -> bool {
        let (share, f) = split_shared(filter);
        let node = self.node_mut(f);
        let id = sub.session.id;
        match share {
            None => match node.subs.iter_mut().find(|s| s.session.id == id) {
                Some(s) => {
                    *s = sub;
                    false
                }
                None => {
                    node.subs.push(sub);
                    true
                }
            },
            Some(name) => {
                let group = match node.shared.iter_mut().position(|g| &*g.name == name) {
                    Some(i) => &mut node.shared[i],
                    None => {
                        node.shared.push(Shared {
                            name: name.into(),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        node.shared.last_mut().expect("pushed")
                    }
                };
                match group.members.iter_mut().find(|s| s.session.id == id) {
                    Some(s) => {
                        *s = sub;
                        false
                    }
                    None => {
                        group.members.push(sub);
                        true
                    }
                }
            }
        }
    }

    /// Removes `session`'s subscription to `filter`; true when there was one.
    pub fn unsubscribe(&mut self, filter: &str, session: u64) -> bool {
        let (share, f) = split_shared(filter);
        let levels: Vec<&str> = f.split('/').collect();
        fn go(node: &mut Node, levels: &[&str], share: Option<&str>, session: u64) -> bool {
            match levels.split_first() {
                Some((l, rest)) => {
                    let Some(child) = node.children.get_mut(*l) else { return false };
                    let removed = go(child, rest, share, session);
                    if child.is_empty() {
                        node.children.remove(*l);
                    }
                    removed
                }
                None => match share {
                    None => {
                        let before = node.subs.len();
                        node.subs.retain(|s| s.session.id != session);
                        node.subs.len() < before
                    }
                    Some(name) => {
                        let mut removed = false;
                        for g in node.shared.iter_mut().filter(|g| &*g.name == name) {
                            let before = g.members.len();
                            g.members.retain(|s| s.session.id != session);
                            removed |= g.members.len() < before;
                        }
                        node.shared.retain(|g| !g.members.is_empty());
                        removed
                    }
                },
            }
        }
        go(&mut self.root, &levels, share, session)
    }

    /// Every subscriber of `topic`: all plain subscriptions, one member per shared group.
    pub fn matches(&self, topic: &str, out: &mut Vec<Match>) {
        let dollar = topic.starts_with('$');
        walk(&self.root, Some(topic), true, dollar, out);
    }
}

fn collect(node: &Node, out: &mut Vec<Match>) {
    for s in &node.subs {
        out.push(Match { session: s.session.clone(), opts: s.opts });
    }
    for g in &node.shared {
        if !g.members.is_empty() {
            let i = g.next.fetch_add(1, Ordering::Relaxed) % g.members.len();
            let s = &g.members[i];
            out.push(Match { session: s.session.clone(), opts: s.opts });
        }
    }
}

/// `rest`: the topic still to match (`None` once every level is consumed).
fn walk(node: &Node, rest: Option<&str>, root: bool, dollar: bool, out: &mut Vec<Match>) {
    // wildcards at the first level never match `$` topics (§4.7.2)
    let wild = !(root && dollar);
    if wild && let Some(h) = node.children.get("#") {
        // `a/#` matches `a` itself and everything below it
        collect(h, out);
    }
    let Some(rest) = rest else {
        collect(node, out);
        return;
    };
    let (level, next) = match rest.split_once('/') {
        Some((l, n)) => (l, Some(n)),
        None => (rest, None),
    };
    if let Some(c) = node.children.get(level) {
        walk(c, next, false, dollar, out);
    }
    if wild && let Some(p) = node.children.get("+") {
        walk(p, next, false, dollar, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    fn opts() -> SubOpts {
        SubOpts { qos: QoS::AtLeastOnce, no_local: false, retain_as_published: false, retain_handling: 0 }
    }

    fn ids(tree: &TopicTree, topic: &str) -> Vec<u64> {
        let mut out = Vec::new();
        tree.matches(topic, &mut out);
        let mut v: Vec<u64> = out.iter().map(|m| m.session.id).collect();
        v.sort();
        v
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut t = TopicTree::default();
        let s: Vec<_> = (0..6).map(|i| Session::new_for_test(i)).collect();
        t.subscribe("a/b", Sub { session: s[0].clone(), opts: opts() });
        t.subscribe("a/+", Sub { session: s[1].clone(), opts: opts() });
        t.subscribe("a/#", Sub { session: s[2].clone(), opts: opts() });
        t.subscribe("#", Sub { session: s[3].clone(), opts: opts() });
        t.subscribe("$SYS/#", Sub { session: s[4].clone(), opts: opts() });
        t.subscribe("+/b/c", Sub { session: s[5].clone(), opts: opts() });
        assert_eq!(ids(&t, "a/b"), vec![0, 1, 2, 3]);
        assert_eq!(ids(&t, "a"), vec![2, 3]);
        assert_eq!(ids(&t, "a/b/c"), vec![2, 3, 5]);
        assert_eq!(ids(&t, "$SYS/x"), vec![4]);
        assert!(t.unsubscribe("a/+", 1));
        assert!(!t.unsubscribe("a/+", 1));
        assert_eq!(ids(&t, "a/b"), vec![0, 2, 3]);
    }

    #[test]
    fn shared_groups_take_turns() {
        let mut t = TopicTree::default();
        let s: Vec<_> = (0..3).map(|i| Session::new_for_test(i)).collect();
        for x in &s {
            t.subscribe("$share/g/jobs/+", Sub { session: x.clone(), opts: opts() });
        }
        let got: Vec<u64> = (0..6).flat_map(|_| ids(&t, "jobs/1")).collect();
        assert_eq!(got.len(), 6, "one member per message");
        for id in 0..3 {
            assert_eq!(got.iter().filter(|g| **g == id).count(), 2, "round robin");
        }
        assert!(t.unsubscribe("$share/g/jobs/+", 0));
        assert!(ids(&t, "jobs/1").iter().all(|i| *i != 0));
    }

    #[test]
    fn filter_validation() {
        assert!(valid_filter("a/+/#"));
        assert!(valid_filter("$share/g/a/#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a+"));
        assert!(!valid_filter("$share//a"));
        assert!(!valid_filter(""));
        assert!(valid_topic("a/b"));
        assert!(!valid_topic("a/+"));
    }
}
