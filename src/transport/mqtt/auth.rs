//! Appliance passwords: Argon2id hashes (PHC strings) in the config, or plain text.
//!
//! A config `password` that starts with `$argon2` is a hash made by `tetherd
//! hash-password`; anything else is compared as plain text (in constant time), and the
//! daemon warns about it at start. Verifying a hash costs ~19 MiB and tens of
//! milliseconds on a Pi, so verifications run on the blocking pool one at a time: a
//! reconnect storm queues instead of exhausting memory.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use tokio::sync::Semaphore;

/// How an appliance's password is stored.
#[derive(Clone)]
pub enum Secret {
    Plain(String),
    Hashed(String),
    /// None configured (an external broker authenticates the appliance): never matches.
    Unset,
}

impl Secret {
    pub fn from_config(password: &str) -> Secret {
        if password.starts_with("$argon2") {
            Secret::Hashed(password.to_owned())
        } else {
            Secret::Plain(password.to_owned())
        }
    }

    pub fn is_plain(&self) -> bool {
        matches!(self, Secret::Plain(_))
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        match (self, other) {
            (Secret::Plain(a), Secret::Plain(b)) | (Secret::Hashed(a), Secret::Hashed(b)) => a == b,
            (Secret::Unset, Secret::Unset) => true,
            _ => false,
        }
    }
}

pub use crate::config::check_hash;

/// Hashes a password with Argon2id and a random salt (the `hash-password` command).
pub fn hash(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Serialises hash verifications (each one takes ~19 MiB).
#[derive(Clone)]
pub struct Verifier {
    slots: Arc<Semaphore>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            slots: Arc::new(Semaphore::new(1)),
        }
    }
}

impl Verifier {
    pub async fn verify(&self, secret: &Secret, presented: &str) -> bool {
        match secret {
            Secret::Unset => false,
            Secret::Plain(expected) => constant_time_eq(expected.as_bytes(), presented.as_bytes()),
            Secret::Hashed(hash) => {
                let Ok(_permit) = self.slots.acquire().await else {
                    return false;
                };
                let (hash, presented) = (hash.clone(), presented.to_owned());
                tokio::task::spawn_blocking(move || {
                    Argon2::default()
                        .verify_password(presented.as_bytes(), hash.as_str())
                        .is_ok()
                })
                .await
                .unwrap_or(false)
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashed_and_plain_passwords_verify() {
        let h = hash("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(check_hash(&h).is_ok());
        assert!(check_hash("$argon2id$nonsense").is_err());
        let v = Verifier::default();
        let hashed = Secret::from_config(&h);
        assert!(!hashed.is_plain());
        assert!(v.verify(&hashed, "s3cret").await);
        assert!(!v.verify(&hashed, "s3cret ").await);
        let plain = Secret::from_config("pw");
        assert!(plain.is_plain());
        assert!(v.verify(&plain, "pw").await);
        assert!(!v.verify(&plain, "pW").await);
    }
}
