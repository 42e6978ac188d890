//! JSON Web Tokens minted by the application's own backend: a browser or mobile app
//! gets one from its backend and hands it to the broker (`Hello.auth_token`,
//! `Authorization: Bearer`, `?token=`), so it never holds a secret of the broker's.
//!
//! Verified with HS256 and a shared secret, or RS256 / ES256 and the backend's public key
//! (`[jwt]` in the config). Claims:
//!
//! | claim | meaning |
//! |---|---|
//! | `sub` | the user id (required): the connection's name, in logs and for refreshes |
//! | `exp` | expiry, seconds since the epoch (required); the connection is closed then unless it refreshed its token |
//! | `nbf` | not before (optional) |
//! | `iss`, `aud` | checked when `issuer` / `audience` are configured |
//! | `publish` | topic patterns the holder may publish to (default: none) |
//! | `subscribe` | topic patterns the holder may subscribe to (default: none) |
//!
//! A clock skew of [`LEEWAY_S`] seconds is allowed on `exp` and `nbf`.

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rtc_proto::topic::validate_pattern;
use serde::{Deserialize, Serialize};

/// Seconds of clock skew allowed between the token's minter and the broker.
pub const LEEWAY_S: u64 = 5;

/// `[jwt]` in the config file.
///
/// ```toml
/// [jwt]
/// hs256_secret = "a long random secret shared with the app's backend"
/// # or, with the backend's public key (PEM):
/// # public_key_file = "/etc/rtc/jwt.pub.pem"
/// # algorithm = "ES256"        # or RS256 (the default with a public key)
/// # issuer = "https://auth.example.com"
/// # audience = "rtc"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The HS256 secret.
    pub hs256_secret: Option<String>,
    /// A PEM public key, for RS256 or ES256.
    pub public_key_file: Option<PathBuf>,
    /// `RS256` or `ES256`, with `public_key_file` (default RS256).
    pub algorithm: Option<String>,
    /// The required `iss`, if any.
    pub issuer: Option<String>,
    /// The required `aud`, if any.
    pub audience: Option<String>,
}

/// What a token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Topic patterns the holder may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topic patterns the holder may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// The holder is an operator: the admin API, deleting topics and consumers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// The verifier the config describes.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Loads the key; an error names what is wrong with the `[jwt]` section.
    pub fn new(config: &JwtConfig) -> Result<Verifier, String> {
        let (key, algorithm) = match (&config.hs256_secret, &config.public_key_file) {
            (Some(secret), None) => {
                if secret.len() < 32 {
                    return Err("jwt.hs256_secret must be at least 32 bytes".into());
                }
                if config.algorithm.as_deref().is_some_and(|a| a != "HS256") {
                    return Err("jwt.algorithm must be HS256 (or absent) with hs256_secret".into());
                }
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    Algorithm::HS256,
                )
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("jwt.public_key_file {}: {e}", path.display()))?;
                let bad = |e: jsonwebtoken::errors::Error| {
                    format!("jwt.public_key_file {}: {e}", path.display())
                };
                match config.algorithm.as_deref().unwrap_or("RS256") {
                    "RS256" => (
                        DecodingKey::from_rsa_pem(&pem).map_err(bad)?,
                        Algorithm::RS256,
                    ),
                    "ES256" => (
                        DecodingKey::from_ec_pem(&pem).map_err(bad)?,
                        Algorithm::ES256,
                    ),
                    other => {
                        return Err(format!(
                            "jwt.algorithm {other:?}: RS256 or ES256 with a public key"
                        ))
                    }
                }
            }
            _ => return Err("[jwt] needs exactly one of hs256_secret and public_key_file".into()),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Verifier { key, validation })
    }

    /// The claims of a valid `token`, or why it is not one.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        use jsonwebtoken::errors::ErrorKind;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
                ErrorKind::InvalidSignature => "the token's signature is not valid".to_string(),
                _ => format!("the token is not valid: {e}"),
            })?
            .claims;
        for p in claims.publish.iter().chain(&claims.subscribe) {
            validate_pattern(p).map_err(|e| format!("the token's pattern {p:?}: {e}"))?;
        }
        Ok(claims)
    }
}

/// An HS256 token for `claims` (`rtc-broker mint-token`, tests).
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

/// Whether `token` has the shape of a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn hs256() -> Verifier {
        Verifier::new(&JwtConfig {
            hs256_secret: Some(SECRET.into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn claims(exp_in: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            exp: crate::clock::now_ms() / 1000 + exp_in,
            nbf: None,
            publish: vec!["chat.>".into()],
            admin: false,
            subscribe: vec!["chat.>".into()],
        }
    }

    #[test]
    fn hs256_tokens_are_verified_with_their_claims() {
        let v = hs256();
        let token = mint_hs256(SECRET, &claims(60)).unwrap();
        assert!(looks_like_jwt(&token));
        assert_eq!(v.verify(&token).unwrap(), claims(60));
        assert!(v
            .verify(&mint_hs256(SECRET, &claims(-60)).unwrap())
            .unwrap_err()
            .contains("expired"));
        let mut early = claims(60);
        early.nbf = Some(crate::clock::now_ms() / 1000 + 60);
        assert!(v
            .verify(&mint_hs256(SECRET, &early).unwrap())
            .unwrap_err()
            .contains("nbf"));
        let other = mint_hs256("another secret of thirty-two bytes!", &claims(60)).unwrap();
        assert!(v.verify(&other).unwrap_err().contains("signature"));
        let mut bad = claims(60);
        bad.publish = vec!["a..b".into()];
        assert!(v.verify(&mint_hs256(SECRET, &bad).unwrap()).is_err());
        assert!(!looks_like_jwt("s3cret"));
    }

    #[test]
    fn es256_tokens_are_verified_with_the_public_key() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("jwt.pub.pem");
        std::fs::write(&public, key.public_key_pem()).unwrap();
        let v = Verifier::new(&JwtConfig {
            public_key_file: Some(public),
            algorithm: Some("ES256".into()),
            ..Default::default()
        })
        .unwrap();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims(60),
            &EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&token).unwrap().sub, "alice");
        // An HS256 token is not accepted by an ES256 broker.
        assert!(v.verify(&mint_hs256(SECRET, &claims(60)).unwrap()).is_err());
    }

    #[test]
    fn a_bad_section_is_refused() {
        assert!(Verifier::new(&JwtConfig::default()).is_err());
        let short = JwtConfig {
            hs256_secret: Some("short".into()),
            ..Default::default()
        };
        assert!(Verifier::new(&short).unwrap_err().contains("32"));
    }
}
