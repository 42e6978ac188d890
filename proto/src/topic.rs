//! Topic names and subscription patterns.
//!
//! A topic is one or more tokens separated by `.`, e.g. `orders.eu.created`. A token is
//! non-empty and contains no whitespace, no control characters and none of `.`, `*`, `>`.
//! A whole name is at most [`MAX_TOPIC_LEN`] bytes and [`MAX_TOKENS`] tokens. Names that
//! start with `$` are reserved for the broker (dead-letter topics and the like): clients
//! may subscribe to them but not publish to them.
//!
//! A pattern is a topic whose tokens may also be the wildcards `*` (exactly one token) or
//! `>` (one or more tokens; only as the last token). `orders.*.created` matches
//! `orders.eu.created`; `orders.>` matches `orders.eu` and `orders.eu.created` but not
//! `orders`.

/// Longest topic name or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;
/// Most tokens in a topic name or pattern.
pub const MAX_TOKENS: usize = 32;

/// Why a topic name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The name is the empty string.
    #[error("topic is empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    #[error("topic is {0} bytes long; the limit is {MAX_TOPIC_LEN}")]
    TooLong(usize),
    /// More than [`MAX_TOKENS`] tokens.
    #[error("topic has {0} tokens; the limit is {MAX_TOKENS}")]
    TooManyTokens(usize),
    /// Two dots in a row, or a dot at either end.
    #[error("topic has an empty token (leading, trailing or doubled '.')")]
    EmptyToken,
    /// A token contains a character that is never allowed.
    #[error("token {token:?} contains the forbidden character {ch:?}")]
    BadChar {
        /// The offending token.
        token: String,
        /// The offending character.
        ch: char,
    },
    /// A wildcard in a topic name (names are concrete; only patterns have wildcards).
    #[error("wildcard {0:?} is not allowed in a topic name (only in subscription patterns)")]
    WildcardInName(String),
    /// `*` or `>` mixed with other characters in one token, e.g. `a*`.
    #[error("wildcard must be a whole token, got {0:?}")]
    PartialWildcard(String),
    /// `>` anywhere but the last token.
    #[error("'>' is only allowed as the last token")]
    GtNotLast,
    /// Publishing to a `$`-prefixed name, reserved for the broker.
    #[error("topics starting with '$' are reserved for the broker")]
    Reserved,
}

fn check_shape(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(s.len()));
    }
    let tokens = s.split('.').count();
    if tokens > MAX_TOKENS {
        return Err(TopicError::TooManyTokens(tokens));
    }
    Ok(())
}

fn check_token(token: &str) -> Result<(), TopicError> {
    if token.is_empty() {
        return Err(TopicError::EmptyToken);
    }
    if let Some(ch) = token.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(TopicError::BadChar {
            token: token.to_string(),
            ch,
        });
    }
    Ok(())
}

/// Checks a concrete topic name as a subscriber would see it (wildcards refused,
/// `$`-prefixed names allowed).
pub fn validate_topic(name: &str) -> Result<(), TopicError> {
    if is_plain_ascii_topic(name) {
        return Ok(());
    }
    check_topic(name)
}

/// [`validate_topic`]'s full check, token by token.
fn check_topic(name: &str) -> Result<(), TopicError> {
    check_shape(name)?;
    for token in name.split('.') {
        check_token(token)?;
        if token.contains(['*', '>']) {
            return Err(TopicError::WildcardInName(token.to_string()));
        }
    }
    Ok(())
}

/// The common case of [`validate_topic`] in one pass over the bytes (every publish is
/// checked): a valid name made only of printable ASCII. Anything else — non-ASCII
/// tokens, or any error — takes the full check, which also says what is wrong.
fn is_plain_ascii_topic(name: &str) -> bool {
    if name.is_empty() || name.len() > MAX_TOPIC_LEN {
        return false;
    }
    let mut tokens = 1;
    let mut prev_dot = true;
    for &b in name.as_bytes() {
        match b {
            b'.' if prev_dot => return false,
            b'.' => {
                tokens += 1;
                prev_dot = true;
            }
            b'*' | b'>' => return false,
            0x21..=0x7e => prev_dot = false,
            _ => return false,
        }
    }
    !prev_dot && tokens <= MAX_TOKENS
}

/// Checks a topic name a client wants to publish to: [`validate_topic`] plus the
/// `$` reservation.
pub fn validate_publish_topic(name: &str) -> Result<(), TopicError> {
    validate_topic(name)?;
    if name.starts_with('$') && inbox_owner(name).is_none() {
        return Err(TopicError::Reserved);
    }
    Ok(())
}

/// The user whose inbox a topic or pattern is: `$user.<id>` and `$user.<id>.…` belong to
/// `<id>` (which, in a pattern, may be a wildcard: then it is nobody's).
pub fn inbox_owner(name: &str) -> Option<&str> {
    let rest = name.strip_prefix("$user.")?;
    rest.split('.').next()
}

/// The inbox topic of user `id`: `$user.<id>`.
pub fn user_inbox(id: &str) -> String {
    format!("$user.{id}")
}

/// Checks a subscription pattern.
pub fn validate_pattern(pattern: &str) -> Result<(), TopicError> {
    check_shape(pattern)?;
    let mut tokens = pattern.split('.').peekable();
    while let Some(token) = tokens.next() {
        check_token(token)?;
        match token {
            "*" => {}
            ">" if tokens.peek().is_none() => {}
            ">" => return Err(TopicError::GtNotLast),
            t if t.contains(['*', '>']) => return Err(TopicError::PartialWildcard(t.to_string())),
            _ => {}
        }
    }
    Ok(())
}

/// Whether every topic the valid pattern `requested` can match is also matched by the
/// valid pattern `allowed` — the permission check for subscriptions. `orders.>` covers
/// `orders.*` and `orders.eu.x`; `orders.*` covers `orders.eu` but not `orders.>`.
pub fn pattern_covers(allowed: &str, requested: &str) -> bool {
    let mut req = requested.split('.');
    for a in allowed.split('.') {
        match (a, req.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(r)) if r != ">" => {}
            (a, Some(r)) if a == r => {}
            _ => return false,
        }
    }
    req.next().is_none()
}

/// Longest durable consumer name.
pub const MAX_CONSUMER_NAME: usize = 64;

/// Checks a durable consumer name: 1 to 64 ASCII letters, digits, `-` or `_`.
pub fn validate_consumer_name(name: &str) -> Result<(), String> {
    validate_name("consumer name", name)
}

/// Checks a queue group name (`Subscribe.group`): the same rule as a consumer name.
pub fn validate_group_name(name: &str) -> Result<(), String> {
    validate_name("group name", name)
}

/// 1 to 64 ASCII letters, digits, `-` or `_`; `what` names it in the error.
fn validate_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_CONSUMER_NAME {
        return Err(format!(
            "{what} must be 1 to {MAX_CONSUMER_NAME} characters, got {}",
            name.len()
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        Some(c) => Err(format!(
            "{what} {name:?} contains {c:?}; use letters, digits, '-' and '_'"
        )),
        None => Ok(()),
    }
}

/// The dead-letter topic of consumer `consumer` on `topic`: `$dlq.<topic>.<consumer>`.
pub fn dead_letter_topic(topic: &str, consumer: &str) -> String {
    format!("$dlq.{topic}.{consumer}")
}

/// Whether a valid `pattern` matches a valid topic `name`. A wildcard in the first
/// position does not match the broker's `$` topics (dead letters, user inboxes): they
/// are reached only by a pattern that names their first token.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if name.starts_with('$') && pattern.starts_with(['*', '>']) {
        return false;
    }
    let mut names = name.split('.');
    for p in pattern.split('.') {
        match (p, names.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (p, Some(n)) if p == n => {}
            _ => return false,
        }
    }
    names.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for n in ["a", "orders.eu.created", "a-b_c.1.Ω", "$dlq.orders.billing"] {
            assert_eq!(validate_topic(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn invalid_names() {
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert_eq!(validate_topic("a..b"), Err(TopicError::EmptyToken));
        assert_eq!(validate_topic(".a"), Err(TopicError::EmptyToken));
        assert_eq!(validate_topic("a."), Err(TopicError::EmptyToken));
        assert!(matches!(
            validate_topic("a b"),
            Err(TopicError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            validate_topic("a\n"),
            Err(TopicError::BadChar { .. })
        ));
        assert!(matches!(
            validate_topic("a.*"),
            Err(TopicError::WildcardInName(_))
        ));
        assert!(matches!(
            validate_topic("a.>"),
            Err(TopicError::WildcardInName(_))
        ));
        assert!(matches!(
            validate_topic(&"x".repeat(256)),
            Err(TopicError::TooLong(256))
        ));
        assert!(matches!(
            validate_topic(&vec!["a"; 33].join(".")),
            Err(TopicError::TooManyTokens(33))
        ));
        assert_eq!(validate_publish_topic("$dlq.x"), Err(TopicError::Reserved));
        assert_eq!(validate_publish_topic("x.$dlq"), Ok(()));
    }

    #[test]
    fn the_one_pass_check_agrees_with_the_full_one() {
        // Every string of up to 4 characters over an alphabet with each kind of byte.
        let alphabet = ['a', 'Z', '.', '*', '>', ' ', '\t', '\u{7f}', 'é', '$', '~'];
        let mut names = vec![String::new()];
        let mut checked = 0;
        for _ in 0..4 {
            let mut longer = Vec::new();
            for name in &names {
                for c in alphabet {
                    let mut n = name.clone();
                    n.push(c);
                    let full = check_topic(&n);
                    if is_plain_ascii_topic(&n) {
                        assert_eq!(full, Ok(()), "{n:?}");
                    }
                    assert_eq!(validate_topic(&n), full, "{n:?}");
                    checked += 1;
                    longer.push(n);
                }
            }
            names = longer;
        }
        assert!(checked > 10_000);
        // The limits.
        let many = vec!["a"; MAX_TOKENS + 1].join(".");
        assert_eq!(validate_topic(&many), check_topic(&many));
        assert!(validate_topic(&many).is_err());
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        assert!(validate_topic(&long).is_err());
        assert!(validate_topic(&vec!["a"; MAX_TOKENS].join(".")).is_ok());
    }

    #[test]
    fn patterns() {
        for p in ["a", "*", ">", "a.*.c", "a.>", "*.*.>"] {
            assert_eq!(validate_pattern(p), Ok(()), "{p}");
        }
        assert_eq!(validate_pattern("a.>.b"), Err(TopicError::GtNotLast));
        assert!(matches!(
            validate_pattern("a*"),
            Err(TopicError::PartialWildcard(_))
        ));
        assert!(matches!(
            validate_pattern("a.b>"),
            Err(TopicError::PartialWildcard(_))
        ));
        assert_eq!(validate_pattern("a..b"), Err(TopicError::EmptyToken));
        assert_eq!(validate_pattern(""), Err(TopicError::Empty));
    }

    #[test]
    fn coverage() {
        let cases = [
            ("orders.>", "orders.*", true),
            ("orders.>", "orders.eu.x", true),
            ("orders.>", "orders.>", true),
            ("orders.>", "orders", false),
            ("orders.*", "orders.eu", true),
            ("orders.*", "orders.*", true),
            ("orders.*", "orders.>", false),
            ("orders.*", "orders.eu.x", false),
            (">", ">", true),
            (">", "*.*", true),
            ("*", ">", false),
            ("a.b", "a.b", true),
            ("a.b", "a.*", false),
        ];
        for (allowed, requested, want) in cases {
            assert_eq!(
                pattern_covers(allowed, requested),
                want,
                "{allowed} covers {requested}?"
            );
        }
        // A concrete topic is covered exactly when the pattern matches it.
        for (p, t) in [
            ("a.*", "a.b"),
            ("a.>", "a.b.c"),
            ("a.*", "a.b.c"),
            ("x", "y"),
        ] {
            assert_eq!(pattern_covers(p, t), pattern_matches(p, t), "{p} vs {t}");
        }
    }

    #[test]
    fn consumer_names_and_dead_letter_topics() {
        assert!(validate_consumer_name("billing-v2_x").is_ok());
        for bad in ["", "a.b", "a b", "ü", &"x".repeat(65)] {
            assert!(validate_consumer_name(bad).is_err(), "{bad:?}");
        }
        let dlq = dead_letter_topic("orders.eu", "billing");
        assert_eq!(dlq, "$dlq.orders.eu.billing");
        assert_eq!(validate_topic(&dlq), Ok(()));
        assert_eq!(validate_publish_topic(&dlq), Err(TopicError::Reserved));
    }

    #[test]
    fn matching() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.b.c", "a.b", false),
            ("a.b", "a.b.c", false),
            ("a.*.c", "a.x.c", true),
            ("a.*.c", "a.x.y.c", false),
            ("a.*", "a", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c.d", true),
            ("a.>", "a", false),
            (">", "anything.at.all", true),
            ("*", "one", true),
            ("*", "one.two", false),
            ("*.b.>", "a.b.c", true),
            ("*.b.>", "a.b", false),
        ];
        for (p, n, want) in cases {
            assert_eq!(pattern_matches(p, n), want, "{p} vs {n}");
        }
    }
}
