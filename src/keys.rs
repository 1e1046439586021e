//! The node's secrets in its data directory: its identity key, its
//! network's secret and the API token, each in a file only the owner may
//! read, never read or written through a symbolic link; and owner-only
//! writes of the directory's other files.

use anyhow::{bail, Context};
use pluresdb_security::{Identity, NetworkSecret};
use std::fs;
use std::io::Write;
use std::path::Path;

/// The node's Ed25519 key pair.
pub const IDENTITY_FILE: &str = "identity.key";
/// The 256-bit secret of the network the node belongs to (hex).
pub const SECRET_FILE: &str = "network.secret";

/// The token that API clients present (hex), when the API needs one.
pub const API_TOKEN_FILE: &str = "api.token";

/// Loads the API token in `dir`, creating it on first use. A token file
/// others could read is made owner-only, with a warning: whoever read it
/// could use it until it is replaced.
pub fn api_token(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(API_TOKEN_FILE);
    if let Some(bytes) = read_private(&path, IfShared::MakePrivate)? {
        let token = String::from_utf8(bytes).ok().map(|t| t.trim().to_owned()).unwrap_or_default();
        if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("API token {} is corrupted; delete it and start the node again for a new one", path.display());
        }
        return Ok(token);
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| anyhow::anyhow!("cannot draw random bytes for an API token: {err}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, format!("{token}\n").as_bytes())?;
    tracing::info!(path = %path.display(), "created an API token");
    Ok(token)
}

/// Reads the API token in `dir` if there is one (for a client of the
/// running node).
pub fn stored_api_token(dir: &Path) -> Option<String> {
    let bytes = read_private(&dir.join(API_TOKEN_FILE), IfShared::MakePrivate).ok()??;
    String::from_utf8(bytes).ok().map(|t| t.trim().to_owned())
}

/// Loads the identity in `dir`, creating it on first use.
pub fn identity(dir: &Path) -> anyhow::Result<Identity> {
    let path = dir.join(IDENTITY_FILE);
    match read_private(&path, IfShared::Refuse)? {
        Some(bytes) => Identity::from_bytes(&bytes).with_context(|| {
            format!("identity key {} is corrupted; restore it from a backup (a new key would make this a different node)", path.display())
        }),
        None => {
            let identity = Identity::generate().context("cannot create an identity key")?;
            write_private(&path, &identity.to_bytes())?;
            tracing::info!(peer_id = %identity.peer_id(), path = %path.display(), "created a new node identity");
            Ok(identity)
        }
    }
}

/// Loads the network secret in `dir`, creating a fresh network's on first use.
pub fn network_secret(dir: &Path) -> anyhow::Result<NetworkSecret> {
    match stored_secret(dir)? {
        Some(secret) => Ok(secret),
        None => {
            let secret = NetworkSecret::generate().context("cannot create a network secret")?;
            write_private(&dir.join(SECRET_FILE), format!("{}\n", secret.to_text()).as_bytes())?;
            tracing::info!(data_dir = %dir.display(), "created a new network");
            Ok(secret)
        }
    }
}

/// Makes `dir` a member of the network whose secret is `secret` (from a
/// ticket). A directory that already belongs to another network is refused:
/// its data and peers were shared under that network's secret.
pub fn join_network(dir: &Path, secret: &NetworkSecret) -> anyhow::Result<()> {
    match stored_secret(dir)? {
        Some(existing) if &existing == secret => Ok(()),
        Some(_) => bail!("{} already belongs to another network; join with a fresh --data-dir (or keep this one's network)", dir.display()),
        None => {
            write_private(&dir.join(SECRET_FILE), format!("{}\n", secret.to_text()).as_bytes())?;
            tracing::info!(data_dir = %dir.display(), "joined a network");
            Ok(())
        }
    }
}

fn stored_secret(dir: &Path) -> anyhow::Result<Option<NetworkSecret>> {
    let path = dir.join(SECRET_FILE);
    match read_private(&path, IfShared::Refuse)? {
        Some(bytes) => {
            let text = String::from_utf8(bytes).ok().map(|t| t.trim().to_owned()).unwrap_or_default();
            text.parse().map(Some).with_context(|| format!("network secret {} is corrupted", path.display()))
        }
        None => Ok(None),
    }
}

/// What to do with a private file that others can read or write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IfShared {
    /// Refuse it: a key others could have read or replaced is not this
    /// node's secret any more, and only its owner can decide what to do.
    Refuse,
    /// Make it owner-only and warn.
    MakePrivate,
}

/// Reads a file that must be private to its owner; `None` if it does not
/// exist. A symbolic link is refused, not followed: the file is opened with
/// `O_NOFOLLOW` and checked through that handle, so what is checked is what
/// is read.
fn read_private(path: &Path, if_shared: IfShared) -> anyhow::Result<Option<Vec<u8>>> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(refused_link(path, err)).with_context(|| format!("cannot read {}", path.display())),
    };
    let meta = file.metadata().with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", path.display());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            match if_shared {
                IfShared::Refuse => bail!(
                    "{} is accessible to other users (mode {mode:o}); run `chmod 600 {}` and start again",
                    path.display(),
                    path.display()
                ),
                IfShared::MakePrivate => {
                    file.set_permissions(fs::Permissions::from_mode(0o600))
                        .with_context(|| format!("cannot make {} owner-only", path.display()))?;
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{mode:o}"),
                        "was readable by other users; made it owner-only (delete it and restart the node for a new one if others may have read it)"
                    );
                }
            }
        }
    }
    let mut contents = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut contents).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(contents))
}

/// A clear error for a private file that is a symbolic link (`O_NOFOLLOW`
/// answers ELOOP); other errors as they are.
fn refused_link(path: &Path, err: std::io::Error) -> anyhow::Error {
    #[cfg(unix)]
    if err.raw_os_error() == Some(libc::ELOOP) {
        return anyhow::anyhow!(
            "{} is a symbolic link; private files of the data directory must be the files themselves (replace the link with the file)",
            path.display()
        );
    }
    err.into()
}

/// Creates `path` with owner-only permissions and `contents`, durably.
/// Never through a symbolic link: an existing link (even a dangling one)
/// is refused.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) => {
            bail!(
                "{} is a symbolic link; private files of the data directory must be the files themselves (remove the link)",
                path.display()
            )
        }
        Err(err) => return Err(err).with_context(|| format!("cannot create {}", path.display())),
    };
    file.write_all(contents).and_then(|()| file.sync_all()).with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(dir) = path.parent() {
        // Make the new directory entry durable too.
        fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(())
}

/// Makes `path` owner-only if it exists and others may read or write it
/// (data and address files left by an older version, a copy or a
/// restore); says so in the log.
pub fn make_owner_only(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o700))
                .with_context(|| format!("cannot make {} owner-only", path.display()))?;
            tracing::info!(path = %path.display(), mode = format!("{mode:o}"), "made a file other users could read owner-only");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes `contents` to `path` (replacing it) as an owner-only file: a
/// staged copy is created owner-only, then renamed over `path`.
pub fn replace_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut staged = path.as_os_str().to_owned();
    staged.push(".new");
    let staged = std::path::PathBuf::from(staged);
    match fs::remove_file(&staged) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot remove {}", staged.display())),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(&staged)
        .and_then(|mut file| file.write_all(contents))
        .and_then(|()| fs::rename(&staged, path))
        .with_context(|| format!("cannot write {}", path.display()))
}
