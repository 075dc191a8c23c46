//! MQTT topic names and filters: validation and matching (MQTT 3.1.1 §4.7, MQTT 5 §4.7–4.8).

/// Whether `topic` (a concrete topic name) matches `filter` (which may hold `+` and `#`).
/// A shared-subscription prefix (`$share/group/`) must be stripped first.
pub fn matches(filter: &str, topic: &str) -> bool {
    // wildcards at the first level do not match topics starting with `$` (§4.7.2)
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Items filed by topic, for matching many filters against many topics: a filter walks only
/// the levels it names (all children at a `+`, everything below at a `#`) instead of testing
/// every topic. Matches exactly what [`matches`] does.
#[derive(Debug)]
pub struct TopicIndex<'a, T> {
    root: Node<'a, T>,
}

#[derive(Debug)]
struct Node<'a, T> {
    children: std::collections::HashMap<&'a str, Node<'a, T>>,
    here: Vec<T>,
}

impl<T> Default for Node<'_, T> {
    fn default() -> Self {
        Node { children: Default::default(), here: Vec::new() }
    }
}

impl<'a, T: Copy> TopicIndex<'a, T> {
    pub fn new() -> Self {
        TopicIndex { root: Node::default() }
    }

    /// Files `item` under the concrete topic `topic`.
    pub fn insert(&mut self, topic: &'a str, item: T) {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level).or_default();
        }
        node.here.push(item);
    }

    /// Every item whose topic matches `filter` (a shared-subscription prefix stripped first).
    pub fn matching(&self, filter: &str) -> Vec<T> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        walk(&self.root, &levels, true, &mut out);
        out
    }
}

impl<'a, T: Copy> Default for TopicIndex<'a, T> {
    fn default() -> Self {
        Self::new()
    }
}

fn walk<T: Copy>(node: &Node<'_, T>, levels: &[&str], first: bool, out: &mut Vec<T>) {
    // wildcards at the first level do not reach topics starting with `$` (§4.7.2)
    let reachable = |key: &&str| !(first && key.starts_with('$'));
    match levels.split_first() {
        None => out.extend_from_slice(&node.here),
        Some((&"#", _)) => {
            // this level itself ("a/#" matches "a"), and everything below
            out.extend_from_slice(&node.here);
            for (_, child) in node.children.iter().filter(|(k, _)| reachable(k)) {
                everything(child, out);
            }
        }
        Some((&"+", rest)) => {
            for (_, child) in node.children.iter().filter(|(k, _)| reachable(k)) {
                walk(child, rest, false, out);
            }
        }
        Some((level, rest)) => {
            if let Some(child) = node.children.get(level) {
                walk(child, rest, false, out);
            }
        }
    }
}

fn everything<T: Copy>(node: &Node<'_, T>, out: &mut Vec<T>) {
    out.extend_from_slice(&node.here);
    for child in node.children.values() {
        everything(child, out);
    }
}

/// Splits `$share/group/filter` into (Some(group), filter); other filters pass through.
pub fn split_shared(filter: &str) -> (Option<&str>, &str) {
    if let Some(rest) = filter.strip_prefix("$share/")
        && let Some((group, f)) = rest.split_once('/')
    {
        return (Some(group), f);
    }
    (None, filter)
}

/// Checks a topic filter; the error says what is wrong.
pub fn validate_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("a topic filter cannot be empty");
    }
    if filter.len() > 65535 {
        return Err("a topic filter is at most 65535 bytes");
    }
    if filter.contains('\0') {
        return Err("a topic filter cannot contain NUL");
    }
    let (group, f) = split_shared(filter);
    if filter.starts_with("$share/") {
        match group {
            None => return Err("a shared subscription is `$share/<group>/<filter>`"),
            Some(g) if g.is_empty() || g.contains(['+', '#']) => {
                return Err("a share name cannot be empty or contain `+` or `#`");
            }
            _ => {}
        }
        if f.is_empty() {
            return Err("a shared subscription needs a filter after the group");
        }
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err("`#` must be a whole level and the last one");
        }
        if level.contains('+') && *level != "+" {
            return Err("`+` must be a whole level");
        }
    }
    Ok(())
}

/// Checks a topic name (what a PUBLISH carries).
pub fn validate_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("a topic cannot be empty");
    }
    if topic.len() > 65535 {
        return Err("a topic is at most 65535 bytes");
    }
    if topic.contains(['+', '#']) {
        return Err("a topic name cannot contain `+` or `#` (those are for filters)");
    }
    if topic.contains('\0') {
        return Err("a topic cannot contain NUL");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_the_spec() {
        let yes = [
            ("a/b", "a/b"),
            ("a/+", "a/b"),
            ("a/#", "a/b/c"),
            ("a/#", "a"),
            ("#", "a/b"),
            ("+/+", "a/b"),
            ("+", ""),
            ("a/+/c", "a//c"),
            ("$SYS/#", "$SYS/x"),
        ];
        let no = [
            ("a/b", "a/c"),
            ("a/+", "a/b/c"),
            ("a/+", "a"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("a/b/c", "a/b"),
        ];
        for (f, t) in yes {
            assert!(matches(f, t), "{f} should match {t}");
        }
        for (f, t) in no {
            assert!(!matches(f, t), "{f} should not match {t}");
        }
    }

    #[test]
    fn shared_subscriptions_split() {
        assert_eq!(split_shared("$share/g/a/+"), (Some("g"), "a/+"));
        assert_eq!(split_shared("a/+"), (None, "a/+"));
    }

    #[test]
    fn validation() {
        assert!(validate_filter("a/#").is_ok());
        assert!(validate_filter("$share/g/a/#").is_ok());
        assert!(validate_filter("a/#/b").is_err());
        assert!(validate_filter("a/b+").is_err());
        assert!(validate_filter("$share/g").is_err());
        assert!(validate_filter("").is_err());
        assert!(validate_topic("a/b").is_ok());
        assert!(validate_topic("a/+").is_err());
    }

    proptest::proptest! {
        /// The index finds exactly the topics `matches` accepts, for any topics and filters
        /// over a small alphabet (empty levels, `$` topics and `#` at any depth included).
        #[test]
        fn the_index_matches_exactly_what_matches_does(
            topics in proptest::collection::vec(proptest::collection::vec(proptest::sample::select(vec!["a", "b", "$s", ""]), 1..4), 0..40),
            filter in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "$s", "", "+"]), 0..4),
            hash in proptest::bool::ANY,
        ) {
            let topics: Vec<String> = topics.iter().map(|t| t.join("/")).collect();
            let mut f: Vec<&str> = filter.clone();
            if hash || f.is_empty() {
                f.push("#");
            }
            let filter = f.join("/");
            let mut index = TopicIndex::new();
            for (i, t) in topics.iter().enumerate() {
                index.insert(t, i);
            }
            let mut got = index.matching(&filter);
            got.sort();
            let want: Vec<usize> = (0..topics.len()).filter(|i| matches(&filter, &topics[*i])).collect();
            proptest::prop_assert_eq!(got, want, "filter {:?} over {:?}", filter, topics);
        }
    }
}
