//! Image references parsed by the grammar of distribution's `reference` package, without a regex.
//!
//! oci-spec's `Reference::try_from` matches one regex whose tag part repeats Unicode `\w` up to 128 times;
//! compiled, it holds 5.4 MB for the life of the process, a third of an edge agent's whole budget. The
//! grammar is small enough to check by hand; the result is the same `Reference` (a test compares the two
//! parsers), except that tags are ASCII only, as the distribution spec has them.

use oci_client::{ParseError, Reference};

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const OFFICIAL_REPOSITORIES: &str = "library";
const DEFAULT_TAG: &str = "latest";
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// Parses `reference`, applying Docker Hub's defaults (`nginx` -> `docker.io/library/nginx:latest`).
pub fn parse(reference: &str) -> Result<Reference, ParseError> {
    if reference.is_empty() {
        return Err(ParseError::NameEmpty);
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    // A tag follows the last colon after the last slash; a colon before it belongs to a registry's port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if !valid_name(name) || !tag.is_none_or(valid_tag) || !digest.is_none_or(digest_format) {
        return Err(ParseError::ReferenceInvalidFormat);
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_MAX {
        return Err(ParseError::NameTooLong);
    }
    if let Some(digest) = digest {
        check_digest_length(digest)?;
    }
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => Reference::with_tag_and_digest(registry, repository, tag.into(), digest.into()),
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.into()),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or(DEFAULT_TAG).into()),
    })
}

/// `[domain/]component(/component)*`, where only the first part may be a domain (`host[:port]`).
fn valid_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let Some(first) = parts.next() else { return false };
    let rest: Vec<&str> = parts.collect();
    if rest.is_empty() {
        return valid_component(first);
    }
    (valid_component(first) || valid_domain(first)) && rest.iter().all(|c| valid_component(c))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let separator = &bytes[start..i];
        let ok = matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|&b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Dot-separated labels of `[a-zA-Z0-9-]` not starting or ending with `-`, then an optional `:port`.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    host.split('.').all(label) && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    tag.len() <= TAG_MAX
        && tag.bytes().next().is_some_and(word)
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// `algorithm:hex`, the algorithm `[A-Za-z][A-Za-z0-9]*` runs joined by `-_+.`, at least 32 hex digits.
fn digest_format(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else { return false };
    let run = |r: &str| {
        r.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()) && r.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    algorithm.split(['-', '_', '+', '.']).all(run) && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_digest_length(digest: &str) -> Result<(), ParseError> {
    let (algorithm, hex) = digest.split_once(':').ok_or(ParseError::DigestInvalidFormat)?;
    let expected = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(ParseError::DigestUnsupported),
    };
    if hex.len() == expected { Ok(()) } else { Err(ParseError::DigestInvalidLength) }
}

/// Docker's normalisation: a first part that looks like a host (a dot, a port, or `localhost`) is the
/// registry; otherwise Docker Hub, where single names live under `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DOCKER_HUB.to_owned(), name.to_owned()),
    };
    if domain == DOCKER_HUB_LEGACY {
        domain = DOCKER_HUB.to_owned();
    }
    if domain == DOCKER_HUB && !repository.contains('/') {
        repository = format!("{OFFICIAL_REPOSITORIES}/{repository}");
    }
    (domain, repository)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn agrees_with_the_regex_grammar() {
        let long = format!("a/{}", "b".repeat(300));
        let long_tag = format!("busybox:{}", "t".repeat(129));
        let cases = [
            "busybox",
            "busybox:1.36",
            "library/busybox",
            "docker.io/busybox",
            "index.docker.io/library/busybox:latest",
            "localhost/app",
            "localhost:5000/app:v1",
            "127.0.0.1:5000/skiff/ticker:v1",
            "registry.example.com/team/app/api:2024.10-rc_1",
            "test.com:tag",
            "test.com:5000",
            "test.com/repo:tag",
            "a__b/c--d/e.f_g:_x",
            &format!("busybox@{SHA256}"),
            &format!("busybox:1@{SHA256}"),
            &format!("registry:5000/app@{SHA256}"),
            "busybox@sha256:abc",
            "busybox@md5:e3b0c44298fc1c149afbf4c8996fb924",
            "busybox@sha256:zz",
            "Upper:1",
            "busybox:",
            ":tag",
            "a//b",
            "-a/b",
            "a/b-",
            "a/b_.c",
            "host-/app",
            "host:port/app",
            "busybox:-x",
            "busybox:a b",
            "büsybox",
            "a/b@",
            "a@b@c",
            "a:1/b:2",
            "Upper/app",
            "example.com./app",
            "a_-b",
            "localhost:5000:tag",
            &format!("busybox:{}", "t".repeat(128)),
            &format!("a/{}", "b".repeat(253)),
            &format!("a/{}", "b".repeat(254)),
            &long,
            &long_tag,
        ];
        for case in cases {
            let ours = parse(case);
            let theirs = Reference::try_from(case);
            match (&ours, &theirs) {
                (Ok(ours), Ok(theirs)) => {
                    assert_eq!(ours.whole(), theirs.whole(), "{case}");
                    assert_eq!((ours.tag(), ours.digest()), (theirs.tag(), theirs.digest()), "{case}");
                }
                (Err(_), Err(_)) => {}
                _ => panic!("{case:?}: ours {ours:?}, oci-spec's {theirs:?}"),
            }
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let fails = |reference: &str| parse(reference).unwrap_err().to_string();
        assert_eq!(fails(""), ParseError::NameEmpty.to_string());
        assert_eq!(fails("Upper:1"), ParseError::ReferenceInvalidFormat.to_string());
        // Tags are ASCII in the distribution spec; oci-spec's Unicode `\w` would take this one.
        assert_eq!(fails("busybox:tä"), ParseError::ReferenceInvalidFormat.to_string());
        assert_eq!(
            fails("busybox@sha256:e3b0c44298fc1c149afbf4c8996fb924"),
            ParseError::DigestInvalidLength.to_string()
        );
        assert_eq!(fails("busybox@sha1:e3b0c44298fc1c149afbf4c8996fb924"), ParseError::DigestUnsupported.to_string());
    }
}
