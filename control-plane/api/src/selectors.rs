//! Label and field selectors as list and watch requests carry them (`?labelSelector=app=web,tier!=db`,
//! `?fieldSelector=spec.nodeName=n1`), and label selectors as objects carry them (`spec.selector`).
//!
//! Parsing follows Kubernetes' `labels.Parse` and `fields.ParseSelector`, including their validation of
//! label keys and values, so a selector Kubernetes rejects is rejected here with a similar message.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde_json::{Map, Value};

use crate::resources::ResourceDef;

/// Why a selector was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    /// The selector string is not in the selector grammar.
    #[error("unable to parse requirement: found '{found}', expected: {expected}")]
    Syntax { found: String, expected: &'static str },
    /// A label key is not a Kubernetes qualified name.
    #[error("unable to parse requirement: invalid label key \"{key}\": {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// A label value is not a valid Kubernetes label value.
    #[error("unable to parse requirement: invalid label value: \"{value}\": {reason}")]
    InvalidValue { value: String, reason: &'static str },
    /// `in` and `notin` need at least one value.
    #[error("unable to parse requirement: for 'in', 'notin' operators, values set can't be empty")]
    EmptyValueSet,
    /// `Exists` and `DoesNotExist` in a `matchExpressions` entry must not have values.
    #[error("unable to parse requirement: values set must be empty for exists and does not exist")]
    ValuesNotAllowed,
    /// A `matchExpressions` operator that is not In, NotIn, Exists or DoesNotExist.
    #[error("\"{0}\" is not a valid label selector operator")]
    UnknownOperator(String),
    /// A field selector term without `=`, `==` or `!=`.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    InvalidFieldTerm { selector: String, term: String },
    /// A field selector value with a bad escape or an unescaped `=` or `,`.
    #[error("invalid field selector value {0:?}: only \\\\, \\, and \\= may be escaped, and = and , must be")]
    InvalidFieldValue(String),
    /// The resource cannot be filtered by this field.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    operator: Operator,
    /// Sorted, so the canonical string form does not depend on the input order.
    values: BTreeSet<String>,
}

impl Requirement {
    fn new(key: String, operator: Operator, values: BTreeSet<String>) -> Result<Self, SelectorError> {
        validate_key(&key)?;
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(SelectorError::EmptyValueSet);
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(SelectorError::ValuesNotAllowed);
            }
            _ => {}
        }
        for value in &values {
            validate_value(value)?;
        }
        Ok(Requirement { key, operator, values })
    }

    fn matches(&self, labels: &Map<String, Value>) -> bool {
        let value = labels.get(&self.key);
        // A label whose value is not a string cannot be written through the API; treat it as not equal.
        let in_values = value.and_then(Value::as_str).is_some_and(|v| self.values.contains(v));
        match self.operator {
            Operator::Equals | Operator::In => in_values,
            Operator::NotEquals | Operator::NotIn => !in_values,
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined = || self.values.iter().map(String::as_str).collect::<Vec<_>>().join(",");
        match self.operator {
            Operator::Equals => write!(f, "{}={}", self.key, joined()),
            Operator::NotEquals => write!(f, "{}!={}", self.key, joined()),
            Operator::In => write!(f, "{} in ({})", self.key, joined()),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, joined()),
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// A label selector: requirements that must all hold. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    /// Sorted by key (stable), as Kubernetes keeps them, which makes [`fmt::Display`] canonical.
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the string syntax: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, joined by
    /// commas. An empty or all-blank string is the empty selector.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut parser = Parser { tokens: lex(s), position: 0 };
        let mut requirements = Vec::new();
        if parser.peek() == &Token::End {
            return Ok(LabelSelector::default());
        }
        loop {
            requirements.push(parser.requirement()?);
            match parser.next() {
                Token::Comma => {}
                Token::End => break,
                other => return Err(syntax(&other, "',' or 'end of string'")),
            }
        }
        Ok(Self::sorted(requirements))
    }

    /// Converts an object's selector (`matchLabels` and `matchExpressions`), as Kubernetes'
    /// `LabelSelectorAsSelector` does. A selector with neither matches everything.
    pub fn from_k8s(sel: &meta::LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (key, value) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement::new(key.clone(), Operator::Equals, BTreeSet::from([value.clone()]))?);
        }
        for expression in sel.match_expressions.iter().flatten() {
            let operator = match expression.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => return Err(SelectorError::UnknownOperator(other.to_string())),
            };
            let values = expression.values.iter().flatten().cloned().collect();
            requirements.push(Requirement::new(expression.key.clone(), operator, values)?);
        }
        Ok(Self::sorted(requirements))
    }

    fn sorted(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector { requirements }
    }

    /// Whether every requirement holds for these labels.
    pub fn matches(&self, labels: &Map<String, Value>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Matches an object's `metadata.labels`; an object without labels has none.
    pub fn matches_object(&self, object: &Value) -> bool {
        match object.pointer("/metadata/labels").and_then(Value::as_object) {
            Some(labels) => self.matches(labels),
            None => self.matches(&Map::new()),
        }
    }

    /// The selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Identifier(String),
    In,
    NotIn,
    Equals,
    DoubleEquals,
    NotEquals,
    Bang,
    Open,
    Close,
    Comma,
    /// A character the grammar has no use for (`<`, `>`, a lone `!` before `(`...).
    Unknown(String),
    End,
}

/// Characters that end an identifier, as in Kubernetes' lexer.
fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '<' | '>')
}

fn lex(s: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if is_special(c) {
            chars.next();
            let token = match (c, chars.peek()) {
                ('=', Some('=')) => {
                    chars.next();
                    Token::DoubleEquals
                }
                ('!', Some('=')) => {
                    chars.next();
                    Token::NotEquals
                }
                ('=', _) => Token::Equals,
                ('!', _) => Token::Bang,
                ('(', _) => Token::Open,
                (')', _) => Token::Close,
                (',', _) => Token::Comma,
                (other, _) => Token::Unknown(other.to_string()),
            };
            tokens.push(token);
            continue;
        }
        let mut word = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || is_special(c) {
                break;
            }
            word.push(c);
            chars.next();
        }
        tokens.push(match word.as_str() {
            "in" => Token::In,
            "notin" => Token::NotIn,
            _ => Token::Identifier(word),
        });
    }
    tokens.push(Token::End);
    tokens
}

fn describe(token: &Token) -> String {
    match token {
        Token::Identifier(s) | Token::Unknown(s) => s.clone(),
        Token::In => "in".into(),
        Token::NotIn => "notin".into(),
        Token::Equals => "=".into(),
        Token::DoubleEquals => "==".into(),
        Token::NotEquals => "!=".into(),
        Token::Bang => "!".into(),
        Token::Open => "(".into(),
        Token::Close => ")".into(),
        Token::Comma => ",".into(),
        Token::End => "end of string".into(),
    }
}

fn syntax(found: &Token, expected: &'static str) -> SelectorError {
    SelectorError::Syntax { found: describe(found), expected }
}

struct Parser {
    /// Always ends with [`Token::End`].
    tokens: Vec<Token>,
    position: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        self.tokens.get(self.position).unwrap_or(&Token::End)
    }

    fn next(&mut self) -> Token {
        let token = self.peek().clone();
        self.position += 1;
        token
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let negated = self.peek() == &Token::Bang;
        if negated {
            self.next();
        }
        let key = match self.next() {
            Token::Identifier(key) => key,
            other => return Err(syntax(&other, "identifier")),
        };
        if negated {
            return Requirement::new(key, Operator::DoesNotExist, BTreeSet::new());
        }
        if matches!(self.peek(), Token::Comma | Token::End) {
            return Requirement::new(key, Operator::Exists, BTreeSet::new());
        }
        let (operator, values) = match self.next() {
            Token::Equals | Token::DoubleEquals => (Operator::Equals, self.exact_value()?),
            Token::NotEquals => (Operator::NotEquals, self.exact_value()?),
            Token::In => (Operator::In, self.value_set()?),
            Token::NotIn => (Operator::NotIn, self.value_set()?),
            other => return Err(syntax(&other, "'=', '!=', '==', 'in', 'notin'")),
        };
        Requirement::new(key, operator, values)
    }

    /// The value after `=`, `==` or `!=`; nothing before a comma or the end is the empty value.
    fn exact_value(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        match self.peek() {
            Token::Comma | Token::End => Ok(BTreeSet::from([String::new()])),
            _ => match self.next() {
                Token::Identifier(value) => Ok(BTreeSet::from([value])),
                other => Err(syntax(&other, "identifier")),
            },
        }
    }

    /// `(v1, v2, ...)`; an empty item between commas is the empty value, as in Kubernetes.
    fn value_set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        match self.next() {
            Token::Open => {}
            other => return Err(syntax(&other, "'('")),
        }
        let mut values = BTreeSet::new();
        if self.peek() == &Token::Close {
            self.next();
            return Ok(values);
        }
        loop {
            match self.peek() {
                Token::Comma | Token::Close => {
                    values.insert(String::new());
                }
                _ => match self.next() {
                    Token::Identifier(value) => {
                        values.insert(value);
                    }
                    other => return Err(syntax(&other, "identifier")),
                },
            }
            match self.next() {
                Token::Comma => {}
                Token::Close => return Ok(values),
                other => return Err(syntax(&other, "',' or ')'")),
            }
        }
    }
}

const NAME_REASON: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and \
     end with an alphanumeric character";

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, the shape of label names and non-empty label values.
fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// A lowercase RFC 1123 subdomain, the shape of a label key prefix.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            let bytes = label.as_bytes();
            match (bytes.first(), bytes.last()) {
                (Some(first), Some(last)) => {
                    (first.is_ascii_lowercase() || first.is_ascii_digit())
                        && (last.is_ascii_lowercase() || last.is_ascii_digit())
                        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                }
                _ => false,
            }
        })
}

fn validate_key(key: &str) -> Result<(), SelectorError> {
    let invalid = |reason| Err(SelectorError::InvalidKey { key: key.to_string(), reason });
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() {
                return invalid("prefix part must be non-empty");
            }
            if !is_dns_subdomain(prefix) {
                return invalid("prefix part must be a lowercase RFC 1123 subdomain of at most 253 characters");
            }
            name
        }
        None => key,
    };
    if name.is_empty() {
        return invalid("name part must be non-empty");
    }
    if name.len() > 63 {
        return invalid("name part must be no more than 63 characters");
    }
    if !is_label_name(name) {
        return invalid(NAME_REASON);
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<(), SelectorError> {
    let invalid = |reason| Err(SelectorError::InvalidValue { value: value.to_string(), reason });
    if value.len() > 63 {
        return invalid("must be no more than 63 characters");
    }
    if !value.is_empty() && !is_label_name(value) {
        return invalid(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and \
             must start and end with an alphanumeric character",
        );
    }
    Ok(())
}

/// A field selector: `field=value`, `field==value` or `field!=value` terms joined by commas.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldTerm {
    field: String,
    value: String,
    equal: bool,
}

/// Where a field label reads its value: the JSON path in the object, and what a missing field reads as.
/// Kubernetes renders booleans with `fmt.Sprint`, so a missing `spec.unschedulable` is `false`.
fn field_source(field: &str) -> (Vec<&str>, &'static str) {
    match field {
        // Events are selected by `source` but Kubernetes fills it from `source.component`.
        "source" => (vec!["source", "component"], ""),
        "spec.unschedulable" => (vec!["spec", "unschedulable"], "false"),
        _ => (field.split('.').collect(), ""),
    }
}

/// The field labels each kind supports beyond `metadata.name` and `metadata.namespace`, as a small
/// hand-written table mirroring the `GetAttrs`/field label conversion functions of Kubernetes.
fn kind_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "status.phase",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.podIP",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "Secret" => &["type"],
        "Namespace" => &["status.phase"],
        "Node" => &["spec.unschedulable"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses `a=b,c!=d`. Values may escape `\,`, `\=` and `\\`; an empty string selects everything.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for term in split_unescaped_commas(s) {
            if term.is_empty() {
                continue;
            }
            // The field never contains an operator, so the first one splits the term (as in Kubernetes).
            let split = term.char_indices().find_map(|(i, _)| {
                let rest = &term[i..];
                ["!=", "==", "="].into_iter().find(|op| rest.starts_with(op)).map(|op| (i, op))
            });
            let Some((i, op)) = split else {
                return Err(SelectorError::InvalidFieldTerm { selector: s.to_string(), term: term.to_string() });
            };
            terms.push(FieldTerm {
                field: term[..i].trim().to_string(),
                value: unescape_field_value(&term[i + op.len()..])?,
                equal: op != "!=",
            });
        }
        Ok(FieldSelector { terms })
    }

    /// Fails on the first field this resource cannot be filtered by.
    pub fn check_supported(&self, def: &ResourceDef) -> Result<(), SelectorError> {
        for term in &self.terms {
            let field = term.field.as_str();
            if !matches!(field, "metadata.name" | "metadata.namespace") && !kind_fields(def.kind).contains(&field) {
                return Err(SelectorError::UnsupportedField(term.field.clone()));
            }
        }
        Ok(())
    }

    /// Whether every term holds; a missing field reads as the empty string (`spec.nodeName=` selects
    /// unscheduled pods). Call [`FieldSelector::check_supported`] first: this does not check support.
    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|term| {
            let (path, missing) = field_source(&term.field);
            let actual = path.iter().try_fold(object, |value, key| value.get(key));
            let actual = match actual {
                None | Some(Value::Null) => missing.to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (actual == term.value) == term.equal
        })
    }

    /// The selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// Splits on commas not preceded by a backslash escape.
fn split_unescaped_commas(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            ',' => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unescape_field_value(raw: &str) -> Result<String, SelectorError> {
    let invalid = || SelectorError::InvalidFieldValue(raw.to_string());
    let mut value = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('\\' | ',' | '=')) => value.push(escaped),
                _ => return Err(invalid()),
            },
            '=' | ',' => return Err(invalid()),
            other => value.push(other),
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;
    use serde_json::json;

    fn labels(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    fn selects(selector: &str, value: Value) -> bool {
        LabelSelector::parse(selector).unwrap().matches(&labels(value))
    }

    #[test]
    fn equality_operators() {
        assert!(selects("app=web", json!({"app": "web"})));
        assert!(selects("app==web", json!({"app": "web"})));
        assert!(!selects("app=web", json!({"app": "db"})));
        assert!(!selects("app=web", json!({})));
        assert!(selects("app!=web", json!({"app": "db"})));
        assert!(selects("app!=web", json!({})), "a missing label is not equal");
        assert!(!selects("app!=web", json!({"app": "web"})));
        assert!(selects("app=", json!({"app": ""})));
        assert!(!selects("app=", json!({})));
    }

    #[test]
    fn set_operators() {
        assert!(selects("env in (prod, staging)", json!({"env": "staging"})));
        assert!(!selects("env in (prod,staging)", json!({"env": "dev"})));
        assert!(!selects("env in (prod)", json!({})));
        assert!(selects("env notin (prod)", json!({"env": "dev"})));
        assert!(selects("env notin (prod)", json!({})));
        assert!(!selects("env notin (prod)", json!({"env": "prod"})));
    }

    #[test]
    fn existence_operators_and_conjunction() {
        assert!(selects("app", json!({"app": ""})));
        assert!(!selects("app", json!({"other": "x"})));
        assert!(selects("!app", json!({"other": "x"})));
        assert!(!selects("!app", json!({"app": "x"})));
        assert!(selects("app=web, !canary,tier in (fe)", json!({"app": "web", "tier": "fe"})));
        assert!(!selects("app=web,!canary", json!({"app": "web", "canary": "true"})));
    }

    #[test]
    fn empty_selector_matches_everything() {
        for s in ["", "   "] {
            let selector = LabelSelector::parse(s).unwrap();
            assert!(selector.is_empty());
            assert!(selector.matches(&Map::new()));
            assert_eq!(selector.to_string(), "");
        }
        assert!(LabelSelector::parse("").unwrap().matches_object(&json!({"metadata": {"name": "x"}})));
        assert!(!LabelSelector::parse("a").unwrap().is_empty());
    }

    #[test]
    fn matches_object_reads_metadata_labels() {
        let selector = LabelSelector::parse("app=web").unwrap();
        assert!(selector.matches_object(&json!({"metadata": {"labels": {"app": "web"}}})));
        assert!(!selector.matches_object(&json!({"metadata": {}})));
        assert!(LabelSelector::parse("!app").unwrap().matches_object(&json!({})));
    }

    #[test]
    fn display_is_canonical() {
        let selector = LabelSelector::parse("z notin (b,a), app==web,!x, y,k!=v,env in ( p )").unwrap();
        assert_eq!(selector.to_string(), "app=web,env in (p),k!=v,!x,y,z notin (a,b)");
        assert_eq!(LabelSelector::parse(&selector.to_string()).unwrap(), selector);
    }

    #[test]
    fn parse_errors() {
        let err = |s: &str| LabelSelector::parse(s).unwrap_err();
        assert_eq!(
            err("a=b c").to_string(),
            "unable to parse requirement: found 'c', expected: ',' or 'end of string'"
        );
        assert_eq!(err("=b"), SelectorError::Syntax { found: "=".into(), expected: "identifier" });
        assert!(matches!(err("a,"), SelectorError::Syntax { .. }), "trailing comma needs a requirement");
        assert!(matches!(err("a in x"), SelectorError::Syntax { .. }));
        assert!(matches!(err("a in (x"), SelectorError::Syntax { .. }));
        assert!(matches!(err("a > 1"), SelectorError::Syntax { .. }));
        assert!(matches!(err("a=(b)"), SelectorError::Syntax { .. }));
        assert_eq!(err("a in ()"), SelectorError::EmptyValueSet);
        assert!(matches!(err("a@b=c"), SelectorError::InvalidKey { .. }));
        assert!(matches!(err("-a=c"), SelectorError::InvalidKey { .. }));
        assert!(matches!(err("Example.com/a=c"), SelectorError::InvalidKey { .. }), "prefix must be lowercase");
        assert!(matches!(err("/a=c"), SelectorError::InvalidKey { .. }));
        assert!(matches!(err("a/b/c=d"), SelectorError::InvalidKey { .. }));
        assert!(matches!(err(&format!("{}=b", "k".repeat(64))), SelectorError::InvalidKey { .. }));
        assert!(matches!(err("a=b$"), SelectorError::InvalidValue { .. }));
        assert!(matches!(err(&format!("a={}", "v".repeat(64))), SelectorError::InvalidValue { .. }));
        assert!(LabelSelector::parse("app.kubernetes.io/name=web_1.x").is_ok());
    }

    #[test]
    fn from_k8s_converts_match_labels_and_expressions() {
        let sel: meta::LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe", "be"]},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "team", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        let selector = LabelSelector::from_k8s(&sel).unwrap();
        assert_eq!(selector.to_string(), "app=web,env notin (dev),!legacy,team,tier in (be,fe)");
        assert!(selector.matches(&labels(json!({"app": "web", "tier": "be", "team": "a"}))));
        assert!(!selector.matches(&labels(json!({"app": "web", "tier": "be"}))));
        assert!(LabelSelector::from_k8s(&meta::LabelSelector::default()).unwrap().is_empty());

        let bad = |v: Value| LabelSelector::from_k8s(&serde_json::from_value(v).unwrap()).unwrap_err();
        assert_eq!(
            bad(json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})),
            SelectorError::UnknownOperator("Gt".into())
        );
        assert_eq!(bad(json!({"matchExpressions": [{"key": "a", "operator": "In"}]})), SelectorError::EmptyValueSet);
        assert_eq!(
            bad(json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})),
            SelectorError::ValuesNotAllowed
        );
        assert!(matches!(bad(json!({"matchLabels": {"a b": "c"}})), SelectorError::InvalidKey { .. }));
    }

    fn pod(node: Option<&str>) -> Value {
        let mut pod =
            json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {}, "status": {"phase": "Running"}});
        if let Some(node) = node {
            pod["spec"]["nodeName"] = json!(node);
        }
        pod
    }

    #[test]
    fn field_selector_operators() {
        let sel = |s: &str| FieldSelector::parse(s).unwrap();
        assert!(sel("metadata.name=p").matches(&pod(None)));
        assert!(sel("metadata.name==p").matches(&pod(None)));
        assert!(!sel("metadata.name!=p").matches(&pod(None)));
        assert!(sel("metadata.name=p,metadata.namespace=default").matches(&pod(None)));
        assert!(!sel("metadata.name=p,metadata.namespace=kube-system").matches(&pod(None)));
        assert!(sel("spec.nodeName=").matches(&pod(None)), "missing field compares as empty");
        assert!(!sel("spec.nodeName=").matches(&pod(Some("n1"))));
        assert!(sel("spec.nodeName!=").matches(&pod(Some("n1"))));
        assert!(sel("status.phase!=Pending").matches(&pod(None)));
    }

    #[test]
    fn field_selector_special_fields() {
        let sel = |s: &str| FieldSelector::parse(s).unwrap();
        assert!(sel("spec.unschedulable=false").matches(&json!({"spec": {}})));
        assert!(sel("spec.unschedulable=true").matches(&json!({"spec": {"unschedulable": true}})));
        let event = json!({"source": {"component": "kubelet"}, "involvedObject": {"name": "p", "uid": "u1"}});
        assert!(sel("source=kubelet,involvedObject.name=p,involvedObject.uid=u1").matches(&event));
    }

    #[test]
    fn empty_field_selector_and_escapes() {
        let empty = FieldSelector::parse("").unwrap();
        assert!(empty.is_empty() && empty.matches(&json!({})));
        let escaped = FieldSelector::parse(r"metadata.name=a\,b\=c\\d").unwrap();
        assert!(escaped.matches(&json!({"metadata": {"name": r"a,b=c\d"}})));
    }

    #[test]
    fn field_selector_parse_errors() {
        assert_eq!(
            FieldSelector::parse("metadata.name").unwrap_err().to_string(),
            "invalid selector: 'metadata.name'; can't understand 'metadata.name'"
        );
        assert!(matches!(FieldSelector::parse(r"a=b\x"), Err(SelectorError::InvalidFieldValue(_))));
        assert!(matches!(FieldSelector::parse("a=b=c"), Err(SelectorError::InvalidFieldValue(_))));
    }

    #[test]
    fn unsupported_field_labels() {
        let find = |plural| resources::find("", "v1", plural).unwrap();
        let sel = |s: &str| FieldSelector::parse(s).unwrap();
        assert!(sel("metadata.name=a,metadata.namespace=b").check_supported(find("configmaps")).is_ok());
        assert!(sel("spec.nodeName=n,status.podIP=1.2.3.4").check_supported(find("pods")).is_ok());
        assert!(sel("involvedObject.kind=Pod,source=x,type=Normal").check_supported(find("events")).is_ok());
        assert!(sel("type=Opaque").check_supported(find("secrets")).is_ok());
        assert!(sel("status.phase=Active").check_supported(find("namespaces")).is_ok());
        assert!(sel("spec.unschedulable=true").check_supported(find("nodes")).is_ok());
        assert_eq!(
            sel("spec.foo=x").check_supported(find("pods")).unwrap_err().to_string(),
            "field label not supported: spec.foo"
        );
        assert_eq!(
            sel("spec.nodeName=n").check_supported(find("services")),
            Err(SelectorError::UnsupportedField("spec.nodeName".into()))
        );
    }
}
