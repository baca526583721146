//! Hiding secrets in what `Debug` and log lines print.

/// `url` with its secrets replaced by `<redacted>`, for `Debug` output and logs: the
/// password of `scheme://user:password@host` (or the whole user part when it has no
/// `:`, as in `nats://TOKEN@host`), and the values of query parameters whose names look
/// secret (`password`, `token`, `sig`, `key`, ...). A comma-separated list of URLs is
/// redacted URL by URL. Anything that is not a URL comes back unchanged.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

/// Whether a parameter or option named `name` holds a secret.
pub(crate) fn is_secret_name(name: &str) -> bool {
    let k = name.to_ascii_lowercase();
    [
        "key",
        "secret",
        "token",
        "password",
        "passwd",
        "pwd",
        "sig",
        "sas",
        "credential",
        "service_account",
        "auth",
    ]
    .iter()
    .any(|w| k.contains(w))
        && !k.ends_with("key_id")
}

const REDACTED: &str = "<redacted>";

fn redact_one(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest_at = scheme_end + 3;
    let rest = &url[rest_at..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_at]);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(REDACTED),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[auth_end..];
    let (before_frag, frag) = match tail.find('#') {
        Some(i) => tail.split_at(i),
        None => (tail, ""),
    };
    match before_frag.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if is_secret_name(k) => format!("{k}={REDACTED}"),
                    _ => p.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(before_frag),
    }
    out.push_str(frag);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/x?sslmode=require&password=p2"),
            "postgres://app:<redacted>@db:5432/x?sslmode=require&password=<redacted>"
        );
        assert_eq!(
            redact_url("nats://s3cr3t@a:4222,nats://u:p@b:4222,nats://c:4222"),
            "nats://<redacted>@a:4222,nats://u:<redacted>@b:4222,nats://c:4222"
        );
        assert_eq!(
            redact_url("https://acct.blob.core.windows.net/c?sv=1&sig=abc#f"),
            "https://acct.blob.core.windows.net/c?sv=1&sig=<redacted>#f"
        );
        assert_eq!(redact_url("https://host/v1/logs"), "https://host/v1/logs");
        assert_eq!(redact_url("host=db user=app"), "host=db user=app");
    }
}
