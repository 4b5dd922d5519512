//! Credentials and nonces: the STUN long-term credential mechanism (RFC 8489 §9.2), coturn's
//! time-limited credentials (`use-auth-secret`, the TURN REST API draft), and stateless nonces
//! that expire.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::Digest;
use sha2::Sha256;
use sha2::digest;

/// The long-term key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2, no SASLprep: the
/// names we see are ASCII).
#[must_use]
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    credential_digest::<Md5>(username, realm, password).into()
}

/// The SHA-256 long-term key used when a request names PASSWORD-ALGORITHM SHA-256.
#[must_use]
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    credential_digest::<Sha256>(username, realm, password).into()
}

fn credential_digest<D: Digest>(username: &str, realm: &str, password: &str) -> digest::Output<D> {
    let mut h = D::new();
    for part in [username, ":", realm, ":", password] {
        h.update(part.as_bytes());
    }
    h.finalize()
}

/// The password of a time-limited credential: base64(HMAC-SHA1(secret, username)), as coturn's
/// `use-auth-secret` and every hosted softphone service compute it.
#[must_use]
pub fn time_limited_password(secret: &str, username: &str) -> String {
    let mut mac =
        <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A secret string that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where the server finds passwords.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Long-term users: name → password.
    pub users: HashMap<String, Secret>,
    /// The shared secret of time-limited credentials (username `expiry:user`).
    pub static_auth_secret: Option<Secret>,
}

/// Why a username was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No such user, or a time-limited username that is not `expiry:user`.
    UnknownUser,
    /// A time-limited credential whose expiry has passed.
    Expired,
}

/// A resolved user: the password to key the HMAC and the name quotas count against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The password (long-term) or derived password (time-limited).
    pub password: Secret,
    /// The name quotas count against: the user part of a time-limited name.
    pub quota_name: String,
}

impl Credentials {
    /// Looks a username up at Unix time `unix_now` (seconds).
    ///
    /// # Errors
    /// A [`Rejection`] saying why the user cannot authenticate.
    pub fn resolve(&self, username: &str, unix_now: u64) -> Result<Resolved, Rejection> {
        if let Some(password) = self.users.get(username) {
            return Ok(Resolved {
                password: password.clone(),
                quota_name: username.to_owned(),
            });
        }
        let Some(secret) = &self.static_auth_secret else {
            return Err(Rejection::UnknownUser);
        };
        // coturn accepts `expiry:user` and a bare `expiry`.
        let (expiry, user) = username.split_once(':').unwrap_or((username, ""));
        let expiry: u64 = expiry.parse().map_err(|_| Rejection::UnknownUser)?;
        if expiry < unix_now {
            return Err(Rejection::Expired);
        }
        Ok(Resolved {
            password: Secret(time_limited_password(&secret.0, username)),
            quota_name: if user.is_empty() {
                username.to_owned()
            } else {
                user.to_owned()
            },
        })
    }
}

/// Mints and checks stateless nonces: `expiry` (seconds on the server's clock, hex) followed
/// by an HMAC of the expiry and the client's IP address under a key drawn at start.
///
/// A nonce is valid until its expiry and only from the address it was given to; a stale one
/// is answered with 438 and a fresh nonce (RFC 8489 §9.2.4).
#[derive(Clone)]
pub struct Nonces {
    key: [u8; 32],
    lifetime: Duration,
}

impl fmt::Debug for Nonces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nonces")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// What a nonce check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Minted by us for this address and not expired.
    Valid,
    /// Minted by us, but expired (or for another address, or garbage): answer 438.
    Stale,
}

/// The start of every nonce this server mints (RFC 8489 §9.2): the nonce cookie `obMatJos2`
/// and the security feature set with bit 0, "password algorithms", set (`gAAA`, 24 bits in
/// base64). A client that understands it knows the 401 lists PASSWORD-ALGORITHMS, and an
/// attacker who strips that attribute to force MD5 is caught (bid-down protection).
pub const NONCE_PREFIX: &str = "obMatJos2gAAA";

/// PASSWORD-ALGORITHMS as this server sends it in every challenge: SHA-256 first (the client
/// takes the first it supports), then MD5; each a 16-bit number and an empty parameter list.
pub const PASSWORD_ALGORITHMS: [u8; 8] = [0, 2, 0, 0, 0, 1, 0, 0];

/// How a request chose its password algorithm (RFC 8489 §9.2.4): the algorithm, or `None` for
/// a request that must be answered 400 — one attribute without the other, a list that is not
/// the one this server sent (a bid-down attempt), or an algorithm it did not offer.
#[must_use]
pub fn password_algorithm(chosen: Option<u16>, echoed: Option<&[u8]>) -> Option<u16> {
    match (chosen, echoed) {
        // A client that does not know password algorithms: MD5, as RFC 5389.
        (None, None) => Some(1),
        (Some(alg @ (1 | 2)), Some(list)) if list == PASSWORD_ALGORITHMS => Some(alg),
        _ => None,
    }
}

impl Nonces {
    /// Nonces keyed by `key` that live for `lifetime`.
    #[must_use]
    pub const fn new(key: [u8; 32], lifetime: Duration) -> Self {
        Self { key, lifetime }
    }

    /// A nonce for `ip`, minted at `now` (seconds since the server's epoch).
    #[must_use]
    pub fn mint(&self, now: Duration, ip: IpAddr) -> String {
        let expiry = (now + self.lifetime).as_secs();
        let mut s = format!("{NONCE_PREFIX}{expiry:016x}");
        for b in self.tag(expiry, ip) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Checks a nonce presented by `ip` at `now`.
    #[must_use]
    pub fn check(&self, nonce: &str, now: Duration, ip: IpAddr) -> NonceCheck {
        let Some(nonce) = nonce.strip_prefix(NONCE_PREFIX) else {
            return NonceCheck::Stale;
        };
        let Some((expiry, tag)) = nonce.split_at_checked(16) else {
            return NonceCheck::Stale;
        };
        let Ok(expiry) = u64::from_str_radix(expiry, 16) else {
            return NonceCheck::Stale;
        };
        let expected: String = self
            .tag(expiry, ip)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if expected != tag || expiry <= now.as_secs() {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }

    fn tag(&self, expiry: u64, ip: IpAddr) -> [u8; 8] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&expiry.to_be_bytes());
        match ip {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        let full = mac.finalize().into_bytes();
        let mut tag = [0; 8];
        tag.copy_from_slice(&full[..8]);
        tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_limited_password_matches_coturn_formula() {
        // Computed independently: printf 1700000000:alice | openssl dgst -sha1 -hmac s3cret
        // -binary | base64.
        assert_eq!(
            time_limited_password("s3cret", "1700000000:alice"),
            "TtElzSjT0GdnTQ9xdcRNxx96yQs="
        );
    }

    #[test]
    fn time_limited_credentials_expire() {
        let creds = Credentials {
            users: HashMap::new(),
            static_auth_secret: Some(Secret("s3cret".into())),
        };
        let r = creds.resolve("1000:alice", 999).unwrap();
        assert_eq!(r.quota_name, "alice");
        assert_eq!(r.password.0, time_limited_password("s3cret", "1000:alice"));
        assert_eq!(creds.resolve("1000:alice", 1001), Err(Rejection::Expired));
        assert_eq!(creds.resolve("alice", 0), Err(Rejection::UnknownUser));
    }

    #[test]
    fn nonces_expire_and_are_bound_to_the_address() {
        let n = Nonces::new([9; 32], Duration::from_secs(600));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let t0 = Duration::from_secs(10);
        let nonce = n.mint(t0, a);
        assert_eq!(n.check(&nonce, t0, a), NonceCheck::Valid);
        assert_eq!(
            n.check(&nonce, Duration::from_secs(609), a),
            NonceCheck::Valid
        );
        assert_eq!(
            n.check(&nonce, Duration::from_secs(610), a),
            NonceCheck::Stale
        );
        assert_eq!(n.check(&nonce, t0, b), NonceCheck::Stale);
        assert_eq!(n.check("garbage", t0, a), NonceCheck::Stale);
        assert_eq!(n.check("€€€€€€€€€€€€€€€€€€", t0, a), NonceCheck::Stale);
    }
}
