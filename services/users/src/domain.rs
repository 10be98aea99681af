//! What a valid account looks like. Pure functions: no I/O, no tonic, no sqlx.

use shop_runtime::FieldViolations;

/// Shortest accepted password, in characters.
pub(crate) const PASSWORD_MIN: usize = 8;
/// Longest accepted password, in characters (argon2 input stays bounded).
pub(crate) const PASSWORD_MAX: usize = 128;
/// Longest display name, in characters.
pub(crate) const DISPLAY_NAME_MAX: usize = 100;

/// Checks an email address's syntax and returns its normalised form
/// (surrounding whitespace removed, lower-cased), or why it is refused.
///
/// The rules are the practical subset of RFC 5321 that mail systems accept:
/// one `@`, a local part of 1 to 64 characters from the unquoted set, a
/// domain of dot-separated labels of letters, digits and inner hyphens,
/// with at least two labels, 254 characters at most in all.
pub(crate) fn normalise_email(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err("must not be empty");
    }
    if email.len() > 254 {
        return Err("must be at most 254 characters");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("must contain an @");
    };
    if domain.contains('@') {
        return Err("must contain exactly one @");
    }
    if local.is_empty() || local.len() > 64 {
        return Err("the part before @ must be 1 to 64 characters");
    }
    let local_ok = local
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    if !local_ok {
        return Err("the part before @ has a character that is not allowed");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err("the domain must have at least two labels (example.com)");
    }
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err("the domain is not a valid host name");
        }
    }
    Ok(email)
}

/// Password length rules, counted in characters.
pub(crate) fn check_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < PASSWORD_MIN {
        return Err(format!("must be at least {PASSWORD_MIN} characters"));
    }
    if n > PASSWORD_MAX {
        return Err(format!("must be at most {PASSWORD_MAX} characters"));
    }
    Ok(())
}

/// A display name, trimmed; 1 to 100 characters, no control characters.
pub(crate) fn normalise_display_name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.chars().count() > DISPLAY_NAME_MAX {
        return Err(format!("must be at most {DISPLAY_NAME_MAX} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(name.to_string())
}

/// A new account's fields, validated together so every problem is reported
/// at once.
pub(crate) struct NewUser {
    pub(crate) email: String,
    pub(crate) display_name: String,
}

pub(crate) fn validate_new_user(
    email: &str,
    password: &str,
    display_name: &str,
) -> Result<NewUser, FieldViolations> {
    let mut v = FieldViolations::new();
    let email = normalise_email(email).map_err(|e| v.add("email", e)).ok();
    if let Err(e) = check_password(password) {
        v.add("password", e);
    }
    let display_name = normalise_display_name(display_name)
        .map_err(|e| v.add("display_name", e))
        .ok();
    match (email, display_name) {
        (Some(email), Some(display_name)) if v.is_empty() => Ok(NewUser {
            email,
            display_name,
        }),
        _ => Err(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(
            normalise_email("  Ada.Lovelace@Example.COM ").unwrap(),
            "ada.lovelace@example.com"
        );
        assert_eq!(
            normalise_email("a+tag@mail.example.org").unwrap(),
            "a+tag@mail.example.org"
        );
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in [
            "",
            "plainaddress",
            "@example.com",
            "a@b@example.com",
            "a@localhost",
            "a@-example.com",
            "a@example..com",
            ".a@example.com",
            "a..b@example.com",
            "a b@example.com",
            "a@exa_mple.com",
        ] {
            assert!(normalise_email(bad).is_err(), "{bad:?} was accepted");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(normalise_email(&long_local).is_err());
    }

    #[test]
    fn password_length_is_counted_in_characters() {
        assert!(check_password("1234567").is_err());
        assert!(check_password("12345678").is_ok());
        assert!(check_password("ééééééé").is_err(), "7 characters, 14 bytes");
        assert!(check_password(&"x".repeat(129)).is_err());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let v = validate_new_user("nope", "short", "  ").err().unwrap();
        let fields: Vec<_> = v.iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["email", "password", "display_name"]);
    }
}
