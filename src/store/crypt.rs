//! Secrets at rest: every secret column (tenant shared secrets, subscription
//! secrets) is stored sealed with AES-256-GCM, in its own TEXT column, as
//!
//! ```text
//! enc:v1:<key id>:<base64(nonce || ciphertext)>
//! ```
//!
//! with a random 96-bit nonce per write and associated data that names the
//! value's place (`tenants.shared_secret:<client key>`), so a ciphertext copied
//! into another row does not decrypt. The key id is the first 8 hex digits of
//! the key's SHA-256. The first configured key seals new writes; every key opens.
//!
//! A value without the `enc:` prefix is plaintext, written before encryption was
//! configured, and is read as it is until `hookrelay secrets reencrypt` seals it.
//! A sealed value whose key is not configured is never handed out: reading it
//! fails, and start-up refuses a store that holds one.
//!
//! Sealing and opening happen in [`crate::store::Store`]'s methods, so both
//! backends share this one implementation and the rest of the program only ever
//! sees plaintext `SecretString`s.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::StoreError;

pub(super) const SEALED: &str = "enc:";
const V1: &str = "v1:";
const NONCE_LEN: usize = 12;
/// `enc:v1:` and an 8-digit key id: what start-up reads of each sealed value.
const SEALED_PREFIX_LEN: usize = 15;

/// A column that holds a secret. Every one is sealed on write, opened on read,
/// checked at start and re-encrypted by `hookrelay secrets reencrypt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecretColumn {
    pub table: &'static str,
    /// The column that identifies the row; its value is part of the associated data.
    pub key: &'static str,
    pub column: &'static str,
}

pub const TENANT_SECRET: SecretColumn = SecretColumn {
    table: "tenants",
    key: "client_key",
    column: "shared_secret",
};

pub const SUBSCRIPTION_SECRET: SecretColumn = SecretColumn {
    table: "subscriptions",
    key: "id",
    column: "secret",
};

/// An admin-webhook source's secrets; a row is `<source id>:<prefix>`.
pub const SOURCE_SECRET: SecretColumn = SecretColumn {
    table: "source_secrets",
    key: "source_id || ':' || prefix",
    column: "secret",
};

/// Forge app system tokens, by installation.
pub const FORGE_TOKEN: SecretColumn = SecretColumn {
    table: "forge_tokens",
    key: "installation_id",
    column: "token",
};

/// Web triggers' keys and signing secrets.
pub const TRIGGER_SECRET: SecretColumn = SecretColumn {
    table: "triggers",
    key: "id",
    column: "secret",
};

/// The `whsec_` secret a sync trigger signs its forwarded requests with.
pub const TRIGGER_FORWARD_SECRET: SecretColumn = SecretColumn {
    table: "triggers",
    key: "id",
    column: "forward_secret",
};

/// Atlassian API tokens attached to admin-webhook sources, for the bridge.
pub const API_TOKEN: SecretColumn = SecretColumn {
    table: "tenant_api_tokens",
    key: "client_key",
    column: "token",
};

/// Every secret column of the store. A new secret column goes here.
pub const SECRET_COLUMNS: [SecretColumn; 7] = [
    TENANT_SECRET,
    SUBSCRIPTION_SECRET,
    SOURCE_SECRET,
    FORGE_TOKEN,
    TRIGGER_SECRET,
    TRIGGER_FORWARD_SECRET,
    API_TOKEN,
];

impl SecretColumn {
    /// The associated data that binds a value to its row: `table.column:row`.
    fn place(&self, row: &str) -> String {
        format!("{}.{}:{}", self.table, self.column, row)
    }

    pub fn name(&self) -> String {
        format!("{}.{}", self.table, self.column)
    }

    /// SQL for both backends: the distinct `enc:v1:<key id>` beginnings of the
    /// sealed values.
    pub(super) fn sealed_prefixes_sql(&self) -> String {
        let Self { table, column, .. } = self;
        format!(
            "SELECT DISTINCT substr({column}, 1, {SEALED_PREFIX_LEN}) FROM {table}
             WHERE {column} LIKE 'enc:%'"
        )
    }

    /// SQL for both backends: every row's key (as text) and stored value.
    pub(super) fn rows_sql(&self) -> String {
        let Self { table, key, column } = self;
        format!("SELECT CAST({key} AS TEXT), {column} FROM {table} ORDER BY {key}")
    }

    /// SQL for both backends: the value of row `$1` becomes `$3` if it is still `$2`.
    pub(super) fn swap_sql(&self) -> String {
        let Self { table, key, column } = self;
        format!("UPDATE {table} SET {column} = $3 WHERE CAST({key} AS TEXT) = $1 AND {column} = $2")
    }
}

/// Parses one key: the base64 of exactly 32 bytes. The error never holds the key.
pub fn parse_key(text: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let bytes = Zeroizing::new(
        STANDARD
            .decode(text.trim())
            .map_err(|_| "is not base64".to_string())?,
    );
    if bytes.len() != 32 {
        return Err(format!(
            "decodes to {} bytes, not 32 (make one with `openssl rand -base64 32`)",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Splits a key list: comma-separated, or one key per line.
pub fn split_keys(text: &str) -> impl Iterator<Item = &str> {
    text.split([',', '\n', '\r'])
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// The first 8 hex digits of the key's SHA-256.
pub fn key_id(key: &[u8]) -> String {
    hex::encode(&Sha256::digest(key)[..4])
}

struct DataKey {
    id: String,
    cipher: Aes256Gcm,
}

/// The store's keys: the first seals, all open. Without keys, values are stored
/// as they are (PostgreSQL without `HOOKRELAY_ENCRYPTION_KEY`).
pub struct Crypt {
    keys: Vec<DataKey>,
}

impl fmt::Debug for Crypt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypt")
            .field("key_ids", &self.key_ids().collect::<Vec<_>>())
            .finish()
    }
}

impl Crypt {
    /// No keys: secrets are written in plaintext.
    pub fn plaintext() -> Self {
        Self { keys: Vec::new() }
    }

    /// A key of its own, never written down (an in-memory database).
    pub fn ephemeral() -> Self {
        let key = Aes256Gcm::generate_key(&mut OsRng);
        Self {
            keys: vec![DataKey {
                id: key_id(&key),
                cipher: Aes256Gcm::new(&key),
            }],
        }
    }

    /// The keys in order of preference (each the base64 of 32 bytes).
    pub fn new(keys: &[SecretString]) -> Result<Self, StoreError> {
        let mut parsed: Vec<DataKey> = Vec::with_capacity(keys.len());
        for (n, key) in keys.iter().enumerate() {
            let bytes = parse_key(key.expose_secret()).map_err(|reason| {
                StoreError::Secret(format!("encryption key {} {reason}", n + 1))
            })?;
            let id = key_id(&bytes);
            if parsed.iter().any(|k| k.id == id) {
                continue;
            }
            let cipher = Aes256Gcm::new_from_slice(&bytes)
                .map_err(|_| StoreError::Secret("an encryption key is not 32 bytes".into()))?;
            parsed.push(DataKey { id, cipher });
        }
        Ok(Self { keys: parsed })
    }

    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The id of the key new writes are sealed with.
    pub fn current_key_id(&self) -> Option<&str> {
        self.keys.first().map(|k| k.id.as_str())
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// The form `secret` is stored in, in `column` of the row `row`.
    pub fn seal(
        &self,
        column: SecretColumn,
        row: &str,
        secret: &SecretString,
    ) -> Result<SecretString, StoreError> {
        let Some(key) = self.keys.first() else {
            return Ok(secret.clone());
        };
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let place = column.place(row);
        let ciphertext = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.expose_secret().as_bytes(),
                    aad: place.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Secret(format!("cannot encrypt {place}")))?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(SecretString::from(format!(
            "{SEALED}{V1}{}:{}",
            key.id,
            STANDARD.encode(sealed)
        )))
    }

    /// The secret a stored value stands for: a sealed one opened, a plaintext
    /// one as it is. A sealed value that does not open is an error, never a secret.
    pub fn open(
        &self,
        column: SecretColumn,
        row: &str,
        stored: &str,
    ) -> Result<SecretString, StoreError> {
        let Some(sealed) = stored.strip_prefix(SEALED) else {
            return Ok(SecretString::from(stored.to_string()));
        };
        let place = column.place(row);
        let (id, data) = sealed
            .strip_prefix(V1)
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(|| {
                StoreError::Secret(format!(
                    "{place} is sealed in an unknown format (not enc:v1)"
                ))
            })?;
        let key = self.keys.iter().find(|k| k.id == id).ok_or_else(|| {
            StoreError::Secret(format!(
                "{place} is encrypted with key id {id}, which is not configured \
                 (HOOKRELAY_ENCRYPTION_KEY)"
            ))
        })?;
        let undecryptable = || {
            StoreError::Secret(format!(
                "{place} does not decrypt with key id {id}: altered, or copied from another row"
            ))
        };
        let data = STANDARD.decode(data).map_err(|_| undecryptable())?;
        if data.len() < NONCE_LEN {
            return Err(undecryptable());
        }
        let (nonce, ciphertext) = data.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| undecryptable())?;
        let plaintext = Zeroizing::new(
            key.cipher
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: place.as_bytes(),
                    },
                )
                .map_err(|_| undecryptable())?,
        );
        let text = std::str::from_utf8(&plaintext).map_err(|_| undecryptable())?;
        Ok(SecretString::from(text.to_string()))
    }

    /// Whether a stored value is as new writes are: sealed with the current key
    /// (or, without keys, plaintext).
    pub fn is_current(&self, stored: &str) -> bool {
        match self.current_key_id() {
            None => !stored.starts_with(SEALED),
            Some(id) => stored
                .strip_prefix(SEALED)
                .and_then(|s| s.strip_prefix(V1))
                .and_then(|s| s.split_once(':'))
                .is_some_and(|(kid, _)| kid == id),
        }
    }

    /// Start-up's check: `prefixes` are the distinct first
    /// [`SEALED_PREFIX_LEN`] characters of the sealed values in the store, and
    /// each must name a configured key.
    pub fn check_prefixes(&self, prefixes: &[String]) -> Result<(), StoreError> {
        let mut unknown = BTreeSet::new();
        for prefix in prefixes {
            let id = prefix
                .strip_prefix(SEALED)
                .and_then(|s| s.strip_prefix(V1))
                .unwrap_or(prefix);
            if !self.key_ids().any(|k| k == id) {
                unknown.insert(id.to_string());
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        let unknown: Vec<String> = unknown.into_iter().collect();
        let configured: Vec<&str> = self.key_ids().collect();
        Err(StoreError::Secret(format!(
            "the store holds secrets encrypted with key id {}, which is not configured \
             (configured: {}); set HOOKRELAY_ENCRYPTION_KEY (or _FILE) to include that key",
            unknown.join(", "),
            if configured.is_empty() {
                "none".to_string()
            } else {
                configured.join(", ")
            }
        )))
    }
}

/// Where the generated key of a SQLite database file lives: `<file>.key`.
pub fn key_file_for(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

/// The key in `path`, made (readable by its owner only) if there is none yet.
/// Creation is atomic: the key is written to a file of its own and linked into
/// place, so two processes starting at once end up with the same key.
pub fn load_or_create_key_file(path: &Path) -> Result<(SecretString, bool), StoreError> {
    let failed = |what: &str, e: std::io::Error| {
        StoreError::Secret(format!(
            "cannot {what} the key file {}: {e}",
            path.display()
        ))
    };
    let created = if path.exists() {
        false
    } else {
        let key = Zeroizing::new(STANDARD.encode(Aes256Gcm::generate_key(&mut OsRng)));
        let tmp = path.with_extension(format!("key.{}.tmp", uuid::Uuid::now_v7().simple()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options.open(&tmp).and_then(|mut file| {
            file.write_all(key.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()
        });
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(failed("create", e)),
        }
    };
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| failed("read", e))?);
    let key = split_keys(&text).next().ok_or_else(|| {
        StoreError::Secret(format!("the key file {} holds no key", path.display()))
    })?;
    parse_key(key)
        .map_err(|reason| StoreError::Secret(format!("the key in {} {reason}", path.display())))?;
    Ok((SecretString::from(key.to_string()), created))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretString {
        SecretString::from(STANDARD.encode([byte; 32]))
    }

    fn crypt(keys: &[u8]) -> Crypt {
        Crypt::new(&keys.iter().map(|b| key(*b)).collect::<Vec<_>>()).unwrap()
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn sealed_values_open_only_in_their_place() {
        let c = crypt(&[1]);
        let sealed = c.seal(TENANT_SECRET, "jira:1", &secret("shh")).unwrap();
        let sealed = sealed.expose_secret();
        let id = key_id(&[1; 32]);
        assert!(sealed.starts_with(&format!("enc:v1:{id}:")), "{sealed}");
        assert!(!sealed.contains("shh"));
        assert_eq!(id.len(), 8);
        let opened = c.open(TENANT_SECRET, "jira:1", sealed).unwrap();
        assert_eq!(opened.expose_secret(), "shh");

        for (column, row) in [(TENANT_SECRET, "jira:2"), (SUBSCRIPTION_SECRET, "jira:1")] {
            let err = c.open(column, row, sealed).unwrap_err().to_string();
            assert!(err.contains("does not decrypt"), "{err}");
        }
    }

    #[test]
    fn every_write_has_a_fresh_nonce() {
        let c = crypt(&[1]);
        let a = c.seal(TENANT_SECRET, "k", &secret("same")).unwrap();
        let b = c.seal(TENANT_SECRET, "k", &secret("same")).unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn altered_values_do_not_open() {
        let c = crypt(&[1]);
        let sealed = c.seal(TENANT_SECRET, "k", &secret("shh")).unwrap();
        let sealed = sealed.expose_secret();
        let mut bytes = sealed.as_bytes().to_vec();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert!(c.open(TENANT_SECRET, "k", &altered).is_err());
        let truncated = &sealed[..sealed.len() - 10];
        assert!(c.open(TENANT_SECRET, "k", truncated).is_err());
        assert!(c.open(TENANT_SECRET, "k", "enc:v2:abcd:xyz").is_err());
    }

    #[test]
    fn rotation_reads_old_values_and_writes_with_the_first_key() {
        let old = crypt(&[1]);
        let sealed = old.seal(TENANT_SECRET, "k", &secret("shh")).unwrap();
        let rotated = crypt(&[2, 1]);
        assert_eq!(rotated.current_key_id(), Some(key_id(&[2; 32]).as_str()));
        assert_eq!(
            rotated
                .open(TENANT_SECRET, "k", sealed.expose_secret())
                .unwrap()
                .expose_secret(),
            "shh"
        );
        assert!(!rotated.is_current(sealed.expose_secret()));
        let resealed = rotated.seal(TENANT_SECRET, "k", &secret("shh")).unwrap();
        assert!(rotated.is_current(resealed.expose_secret()));

        let err = crypt(&[2])
            .open(TENANT_SECRET, "k", sealed.expose_secret())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&key_id(&[1; 32])) && err.contains("not configured"),
            "{err}"
        );
    }

    #[test]
    fn plaintext_is_read_as_it_is_and_written_without_keys() {
        let c = crypt(&[1]);
        assert_eq!(
            c.open(TENANT_SECRET, "k", "legacy")
                .unwrap()
                .expose_secret(),
            "legacy"
        );
        assert!(!c.is_current("legacy"));
        let none = Crypt::plaintext();
        assert!(!none.is_enabled());
        assert_eq!(
            none.seal(TENANT_SECRET, "k", &secret("shh"))
                .unwrap()
                .expose_secret(),
            "shh"
        );
        assert!(none.is_current("shh"));
        let sealed = c.seal(TENANT_SECRET, "k", &secret("shh")).unwrap();
        assert!(none
            .open(TENANT_SECRET, "k", sealed.expose_secret())
            .is_err());
    }

    #[test]
    fn start_up_check_names_unknown_key_ids() {
        let c = crypt(&[1]);
        let known = format!("enc:v1:{}", key_id(&[1; 32]));
        assert!(c.check_prefixes(std::slice::from_ref(&known)).is_ok());
        let err = c
            .check_prefixes(&[known, "enc:v1:deadbeef".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("deadbeef"), "{err}");
        assert!(Crypt::plaintext()
            .check_prefixes(&["enc:v1:deadbeef".into()])
            .is_err());
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(parse_key(&STANDARD.encode([7u8; 32])).is_ok());
        let short = STANDARD.encode([7u8; 16]);
        let err = parse_key(&short).unwrap_err();
        assert!(err.contains("16 bytes") && !err.contains(&short), "{err}");
        assert!(parse_key("not base64!").is_err());
        let listed: Vec<&str> = split_keys(" a ,b\nc\r\n\n").collect();
        assert_eq!(listed, ["a", "b", "c"]);
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = key_file_for(&dir.path().join("hookrelay.db"));
        assert!(path.ends_with("hookrelay.db.key"));
        let (first, created) = load_or_create_key_file(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = load_or_create_key_file(&path).unwrap();
        assert!(!created);
        assert_eq!(first.expose_secret(), again.expose_secret());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
