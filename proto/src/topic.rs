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
}
