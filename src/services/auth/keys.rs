//! Signing keys: generated on first start into `<data_dir>/keys/` (Ed25519 by default, RSA
//! 2048 for RS256), or one PEM file named by `auth.keys.private_key_path`.
//!
//! Each generated key is a PKCS#8 PEM file named `<kid>.pem`, where the kid starts with its
//! creation time (Unix ms) and algorithm (`1763800000000-ed25519-1a2b3c4d`). The newest key signs. An older
//! key stays published in the JWKS until every token it signed has expired (its successor's age
//! exceeds the access-token lifetime plus leeway); then its file is removed. `beep keys rotate`
//! adds a key; running servers pick it up at their next rescan.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rand::RngExt as _;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use sha2::{Digest as _, Sha256};

use crate::config::{AuthConfig, SigningAlgorithm};
use crate::platform::clock::Clock;
use crate::platform::identity::VerifyingKey;
use crate::platform::ids::hex;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an Ed25519 or RSA private key in PEM (PKCS#8 or PKCS#1)")]
    Unreadable { path: PathBuf },
    #[error("generating a key: {0}")]
    Generate(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A private key that signs access tokens.
pub struct SigningKey {
    pub public: VerifyingKey,
    encoding: EncodingKey,
}

impl SigningKey {
    pub fn kid(&self) -> &str {
        &self.public.kid
    }

    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> jsonwebtoken::errors::Result<String> {
        let mut header = Header::new(self.public.algorithm);
        header.kid = Some(self.public.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }

    fn from_pem(kid: String, pem: &str, path: &Path) -> Result<Self, KeyError> {
        let unreadable = || KeyError::Unreadable {
            path: path.to_owned(),
        };
        let (algorithm, encoding, decoding) =
            if let Ok(ed) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
                (
                    Algorithm::EdDSA,
                    EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|_| unreadable())?,
                    // The raw 32-byte public key, which is what jsonwebtoken expects here.
                    DecodingKey::from_ed_der(ed.verifying_key().as_bytes()),
                )
            } else {
                let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
                    .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
                    .map_err(|_| unreadable())?;
                (
                    Algorithm::RS256,
                    EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| unreadable())?,
                    DecodingKey::from_rsa_raw_components(
                        &rsa.n().to_bytes_be(),
                        &rsa.e().to_bytes_be(),
                    ),
                )
            };
        let mut jwk =
            Jwk::from_decoding_key(&decoding, Some(algorithm)).map_err(|_| unreadable())?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(Self {
            public: VerifyingKey {
                kid,
                algorithm,
                key: decoding,
                jwk,
            },
            encoding,
        })
    }
}

/// The signing key in use and the public keys still published.
pub struct KeyRing {
    source: Source,
    /// How long a superseded key stays published.
    retain_secs: u64,
    state: RwLock<Arc<Keys>>,
    /// Dates new keys and ages old ones.
    clock: Clock,
}

enum Source {
    Directory {
        dir: PathBuf,
        algorithm: SigningAlgorithm,
    },
    File(PathBuf),
}

pub struct Keys {
    pub signer: Arc<SigningKey>,
    pub published: Vec<VerifyingKey>,
}

impl KeyRing {
    /// Loads the keys, generating the first one if the directory has none.
    pub fn open(config: &AuthConfig, data_dir: &Path, clock: Clock) -> Result<Self, KeyError> {
        let source = match &config.keys.private_key_path {
            Some(path) => Source::File(path.clone()),
            None => Source::Directory {
                dir: keys_dir(data_dir),
                algorithm: config.keys.algorithm,
            },
        };
        let retain_secs = config.access_token_ttl_secs + config.leeway_secs;
        let keys = load(&source, retain_secs, true, &clock)?;
        Ok(Self {
            source,
            retain_secs,
            state: RwLock::new(Arc::new(keys)),
            clock,
        })
    }

    pub fn current(&self) -> Arc<Keys> {
        Arc::clone(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads the key directory; returns whether the published set changed.
    pub fn reload(&self) -> Result<bool, KeyError> {
        let before = self.current();
        // The common case, nothing rotated or retired, costs one directory listing.
        if let Source::Directory { dir, .. } = &self.source {
            let stored = list(dir)?;
            let (live, retired) = partition(&stored, self.clock.now_millis(), self.retain_secs);
            if retired.is_empty() && live == kids(&before) {
                return Ok(false);
            }
        }
        let keys = load(&self.source, self.retain_secs, false, &self.clock)?;
        let changed = kids(&before) != kids(&keys);
        if changed {
            *self.state.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        }
        Ok(changed)
    }
}

fn kids(keys: &Keys) -> Vec<&str> {
    keys.published.iter().map(|k| k.kid.as_str()).collect()
}

pub fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

/// The key codes are MACed with: from `auth.otp.secret`, else a random one kept in the key
/// directory (created on first start).
pub fn otp_secret(config: &AuthConfig, data_dir: &Path) -> Result<[u8; 32], KeyError> {
    if !config.otp.secret.is_empty() {
        return Ok(Sha256::digest(config.otp.secret.expose().as_bytes()).into());
    }
    let dir = keys_dir(data_dir);
    let path = dir.join(OTP_SECRET_FILE);
    match fs::read(&path) {
        Ok(bytes) if bytes.len() == 32 => {
            let mut secret = [0u8; 32];
            secret.copy_from_slice(&bytes);
            return Ok(secret);
        }
        Ok(_) => {
            return Err(KeyError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "expected 32 bytes"),
            });
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_error(&path)(err)),
    }
    let secret: [u8; 32] = rand::rng().random();
    write_private(&dir, OTP_SECRET_FILE, &secret)?;
    Ok(secret)
}

const OTP_SECRET_FILE: &str = "otp.secret";

/// Adds a new signing key to `<data_dir>/keys` (`beep keys rotate`); returns its kid.
pub fn rotate(
    data_dir: &Path,
    algorithm: SigningAlgorithm,
    clock: &Clock,
) -> Result<String, KeyError> {
    generate(&keys_dir(data_dir), algorithm, clock)
}

fn load(
    source: &Source,
    retain_secs: u64,
    may_generate: bool,
    clock: &Clock,
) -> Result<Keys, KeyError> {
    match source {
        Source::File(path) => {
            let pem = fs::read_to_string(path).map_err(io_error(path))?;
            let fingerprint = Sha256::digest(pem.as_bytes());
            let kid = format!("pem-{}", hex(&fingerprint[..8]));
            let key = SigningKey::from_pem(kid, &pem, path)?;
            Ok(Keys {
                published: vec![key.public.clone()],
                signer: Arc::new(key),
            })
        }
        Source::Directory { dir, algorithm } => {
            let mut stored = list(dir)?;
            if stored.is_empty() && may_generate {
                generate(dir, *algorithm, clock)?;
                stored = list(dir)?;
            }
            let (live, retired) = partition(&stored, clock.now_millis(), retain_secs);
            for kid in retired {
                // Its tokens are all expired; a failed removal only leaves a stale file.
                let path = dir.join(format!("{kid}.pem"));
                if let Err(err) = fs::remove_file(&path) {
                    tracing::warn!(error = %err, path = %path.display(), "cannot remove a retired key");
                }
            }
            let mut published = Vec::new();
            let mut signer = None;
            for kid in live {
                let path = dir.join(format!("{kid}.pem"));
                let pem = fs::read_to_string(&path).map_err(io_error(&path))?;
                let key = SigningKey::from_pem(kid.to_owned(), &pem, &path)?;
                published.push(key.public.clone());
                if signer.is_none() {
                    signer = Some(Arc::new(key));
                }
            }
            let signer = signer.ok_or_else(|| KeyError::Io {
                path: dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no signing key"),
            })?;
            Ok(Keys { signer, published })
        }
    }
}

/// Splits stored keys into those still published, newest (the signer) first, and those whose
/// tokens have all expired: an older key stays while its successor is younger than the
/// longest token lifetime.
fn partition(stored: &[(i64, String)], now: i64, retain_secs: u64) -> (Vec<&str>, Vec<&str>) {
    let retain_ms = i64::try_from(retain_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let (mut live, mut retired) = (Vec::new(), Vec::new());
    let mut successor_created: Option<i64> = None;
    for (created, kid) in stored.iter().rev() {
        if successor_created.is_some_and(|s| now >= s.saturating_add(retain_ms)) {
            retired.push(kid.as_str());
        } else {
            live.push(kid.as_str());
        }
        successor_created = Some(*created);
    }
    (live, retired)
}

/// `(created, kid)` of every key file, oldest first.
fn list(dir: &Path) -> Result<Vec<(i64, String)>, KeyError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_error(dir)(err)),
    };
    let mut keys = Vec::new();
    for entry in entries {
        let name = entry.map_err(io_error(dir))?.file_name();
        let Some(kid) = name.to_str().and_then(|n| n.strip_suffix(".pem")) else {
            continue;
        };
        if let Some(created) = kid.split('-').next().and_then(|t| t.parse::<i64>().ok()) {
            keys.push((created, kid.to_owned()));
        }
    }
    keys.sort();
    Ok(keys)
}

fn generate(dir: &Path, algorithm: SigningAlgorithm, clock: &Clock) -> Result<String, KeyError> {
    let (tag, pem) = match algorithm {
        SigningAlgorithm::EdDSA => {
            let seed: [u8; 32] = rand::rng().random();
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let pem = key
                .to_pkcs8_pem(Default::default())
                .map_err(|err| KeyError::Generate(err.to_string()))?;
            ("ed25519", pem.to_string())
        }
        SigningAlgorithm::RS256 => {
            use rsa::pkcs8::EncodePrivateKey as _;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|err| KeyError::Generate(err.to_string()))?;
            let pem = key
                .to_pkcs8_pem(Default::default())
                .map_err(|err| KeyError::Generate(err.to_string()))?;
            ("rs256", pem.to_string())
        }
    };
    let suffix: [u8; 4] = rand::rng().random();
    let kid = format!("{}-{tag}-{}", clock.now_millis(), hex(&suffix));
    write_private(dir, &format!("{kid}.pem"), pem.as_bytes())?;
    tracing::info!(kid, "signing key generated");
    Ok(kid)
}

/// Writes a file only its owner can read, whole or not at all.
fn write_private(dir: &Path, name: &str, contents: &[u8]) -> Result<(), KeyError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_error(dir))?;
    let path = dir.join(name);
    let partial = dir.join(format!(".{name}.partial"));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io_error(&partial))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&partial))?;
    fs::rename(&partial, &path).map_err(io_error(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generated key renamed as if it had been created `age_ms` ago.
    fn key_aged(dir: &Path, age_ms: i64) -> String {
        let clock = Clock::system();
        let kid = generate(dir, SigningAlgorithm::EdDSA, &clock).unwrap_or_default();
        let (_, rest) = kid.split_once('-').unwrap_or_default();
        let aged = format!("{}-{rest}", clock.now_millis() - age_ms);
        fs::rename(
            dir.join(format!("{kid}.pem")),
            dir.join(format!("{aged}.pem")),
        )
        .unwrap_or_else(|err| panic!("{err}"));
        aged
    }

    #[test]
    fn the_newest_key_signs_and_retired_keys_leave_after_their_tokens() {
        let data = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
        let dir = keys_dir(data.path());
        let oldest = key_aged(&dir, 7_200_000);
        let previous = key_aged(&dir, 3_600_000);
        let newest = key_aged(&dir, 1_000);
        let source = Source::Directory {
            dir: dir.clone(),
            algorithm: SigningAlgorithm::EdDSA,
        };
        // Tokens live 15 minutes: `previous` was superseded 1 s ago and stays published;
        // `oldest` was superseded an hour ago, so every token it signed has expired.
        let keys =
            load(&source, 900, false, &Clock::system()).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(keys.signer.kid(), newest);
        assert_eq!(kids(&keys), vec![newest.as_str(), previous.as_str()]);
        assert!(!dir.join(format!("{oldest}.pem")).exists());
        let token = keys
            .signer
            .sign(&serde_json::json!({"exp": 1}))
            .unwrap_or_default();
        let header = jsonwebtoken::decode_header(&token).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(header.kid.as_deref(), Some(newest.as_str()));
        assert_eq!(header.alg, Algorithm::EdDSA);
    }
}
