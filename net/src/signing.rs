//! Signatures of hub-distributed plugins: Ed25519 (ring) over the plugin's name, version and
//! SHA-256. The operator signs with a key only the pushing side holds (`hub plugins keygen`,
//! `hub plugins push --key`); an agent runs a plugin only if one of the public keys it trusts
//! (`plugins.trusted_keys`) verifies the signature and the component hashes to what was signed.
//! The hub stores and forwards signed plugins but cannot make an agent run one it altered.

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_BYTES: usize = 32;

/// Why a signature or a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// A public key that is not 64 hex digits.
    #[error("public key {key:?}: {problem}")]
    BadPublicKey {
        /// The key as given (cut).
        key: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A private key file that is not an Ed25519 PKCS#8 document.
    #[error("private key: {0}")]
    BadPrivateKey(String),
    /// The component does not hash to what was signed.
    #[error("plugin {name} version {version}: its SHA-256 is not the one it was signed with")]
    HashMismatch {
        /// Plugin name.
        name: String,
        /// Its version.
        version: u64,
    },
    /// No trusted key verifies the signature.
    #[error(
        "plugin {name} version {version}: no trusted key verifies its signature ({keys} trusted)"
    )]
    Untrusted {
        /// Plugin name.
        name: String,
        /// Its version.
        version: u64,
        /// How many keys were tried.
        keys: usize,
    },
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The bytes a signature covers: a domain tag, the name, the version and the hash.
fn message(name: &str, version: u64, sha256: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + name.len() + 8 + 32);
    m.extend_from_slice(b"edge-replicator plugin v1\0");
    m.extend_from_slice(name.as_bytes());
    m.push(0);
    m.extend_from_slice(&version.to_be_bytes());
    m.extend_from_slice(sha256);
    m
}

/// A new Ed25519 key: its PKCS#8 document (the private key file) and its public key in hex.
pub fn generate_key() -> Result<(Vec<u8>, String), SigningError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| SigningError::BadPrivateKey("generating a key failed".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| SigningError::BadPrivateKey(e.to_string()))?;
    Ok((pkcs8.as_ref().to_vec(), hex(pair.public_key().as_ref())))
}

/// The public key (hex) of a PKCS#8 private key.
pub fn public_key_of(pkcs8: &[u8]) -> Result<String, SigningError> {
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
        .map_err(|e| SigningError::BadPrivateKey(format!("not an Ed25519 PKCS#8 key: {e}")))?;
    Ok(hex(pair.public_key().as_ref()))
}

/// Signs plugin `name` at `version` whose component hashes to `sha256`.
pub fn sign(
    pkcs8: &[u8],
    name: &str,
    version: u64,
    sha256: &[u8; 32],
) -> Result<Vec<u8>, SigningError> {
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
        .map_err(|e| SigningError::BadPrivateKey(format!("not an Ed25519 PKCS#8 key: {e}")))?;
    Ok(pair.sign(&message(name, version, sha256)).as_ref().to_vec())
}

/// Parses a public key given as 64 hex digits.
pub fn parse_public_key(key: &str) -> Result<[u8; PUBLIC_KEY_BYTES], SigningError> {
    let bad = |problem| SigningError::BadPublicKey {
        key: key.chars().take(80).collect(),
        problem,
    };
    let key = key.trim();
    if key.len() != 2 * PUBLIC_KEY_BYTES {
        return Err(bad("must be 64 hex digits (an Ed25519 public key)"));
    }
    let mut out = [0; PUBLIC_KEY_BYTES];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&key[2 * i..2 * i + 2], 16).map_err(|_| bad("is not hex"))?;
    }
    Ok(out)
}

/// Checks that `wasm` hashes to `sha256` and that one of `trusted` signed it as `name` at
/// `version`.
pub fn verify(
    trusted: &[[u8; PUBLIC_KEY_BYTES]],
    name: &str,
    version: u64,
    sha256: &[u8; 32],
    signature: &[u8],
    wasm: &[u8],
) -> Result<(), SigningError> {
    if self::sha256(wasm) != *sha256 {
        return Err(SigningError::HashMismatch {
            name: name.into(),
            version,
        });
    }
    let m = message(name, version, sha256);
    if trusted.iter().any(|k| {
        UnparsedPublicKey::new(&ED25519, k)
            .verify(&m, signature)
            .is_ok()
    }) {
        Ok(())
    } else {
        Err(SigningError::Untrusted {
            name: name.into(),
            version,
            keys: trusted.len(),
        })
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_plugin_verifies_and_any_change_is_refused() {
        let (private, public) = generate_key().unwrap();
        assert_eq!(public_key_of(&private).unwrap(), public);
        let key = parse_public_key(&public).unwrap();
        let wasm = b"\0asm component bytes";
        let hash = sha256(wasm);
        let sig = sign(&private, "filter", 3, &hash).unwrap();
        verify(&[key], "filter", 3, &hash, &sig, wasm).unwrap();

        let other = parse_public_key(&generate_key().unwrap().1).unwrap();
        assert!(matches!(
            verify(&[other], "filter", 3, &hash, &sig, wasm),
            Err(SigningError::Untrusted { keys: 1, .. })
        ));
        verify(&[other, key], "filter", 3, &hash, &sig, wasm).unwrap();
        for (name, version) in [("filter2", 3), ("filter", 4)] {
            assert!(
                verify(&[key], name, version, &hash, &sig, wasm).is_err(),
                "{name} {version}"
            );
        }
        assert!(matches!(
            verify(&[key], "filter", 3, &hash, &sig, b"\0asm other bytes"),
            Err(SigningError::HashMismatch { .. })
        ));
    }

    #[test]
    fn public_keys_are_64_hex_digits() {
        assert!(parse_public_key(&"ab".repeat(32)).is_ok());
        for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(parse_public_key(bad).is_err(), "{bad}");
        }
        assert!(public_key_of(b"not a key").is_err());
    }
}
