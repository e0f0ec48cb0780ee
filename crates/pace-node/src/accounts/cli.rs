//! `pace-node admin …`: create tenants and admin users, and list them,
//! in the store the node is configured with (`--redis`, `--redis-prefix`,
//! `--data-dir` and their `PACE_*` variables, exactly as for `serve`), so
//! it works while the nodes run.
//!
//! - `admin add-tenant ID [--name N] [--origin URL]… [--update]`
//! - `admin add-user --tenant T USER [--update]`: the password is the first
//!   line of standard input (at least 12 characters), never an argument,
//!   so it stays out of shell history and `ps`.
//! - `admin list`: tenants, their origins and user names; never hashes.
//!
//! Adding a tenant or user that exists fails unless `--update` is given:
//! then `add-user` sets the new password (creating the user if needed) and
//! `add-tenant` replaces the name and origins that are given.
//!
//! Exit codes: 0 done; 2 bad input or a conflict with what is stored (bad
//! id, short password, tenant exists, no such tenant); 1 the store failed
//! (Redis unreachable, accounts file unreadable).

use std::io::{BufRead, IsTerminal, Read};
use std::process::ExitCode;
use std::time::Duration;

use super::password::MAX_PASSWORD_BYTES;
use super::{
    AccountError, AccountStore, AdminUser, MemoryAccountStore, Password, RedisAccountStore, Tenant,
    TenantId, UserName, hash_password, unix_now,
};
use crate::config::{AdminCommand, ServeArgs};

/// Why an admin command failed; decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input or a conflict with the stored accounts (exit 2).
    #[error("{0}")]
    Input(String),
    /// The store failed (exit 1).
    #[error("{0}")]
    Store(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Input(_) => 2,
            CliError::Store(_) => 1,
        }
    }
}

impl From<crate::names::InvalidName> for CliError {
    fn from(e: crate::names::InvalidName) -> CliError {
        CliError::Input(e.0)
    }
}

impl From<AccountError> for CliError {
    fn from(e: AccountError) -> CliError {
        match e {
            AccountError::Unavailable(_) | AccountError::Redis(_) => CliError::Store(e.to_string()),
            AccountError::TenantExists(_) => {
                CliError::Input(format!("{e} (409: use --update to change it)"))
            }
            AccountError::UserExists { .. } => {
                CliError::Input(format!("{e} (409: use --update to set a new password)"))
            }
            other => CliError::Input(other.to_string()),
        }
    }
}

/// Runs an admin command, printing its result (stdout) or error (stderr).
pub fn main(cmd: AdminCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pace-node admin: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cmd, &mut std::io::stdin().lock())) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pace-node admin: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs an admin command with `stdin` as the password source; returns
/// what to print.
pub async fn run(cmd: AdminCommand, stdin: &mut dyn BufRead) -> Result<String, CliError> {
    match cmd {
        AdminCommand::AddTenant {
            id,
            name,
            origins,
            update,
            node,
        } => {
            let id = TenantId::parse(&id)?;
            let tenant = Tenant {
                name: name.clone().unwrap_or_else(|| id.to_string()),
                id,
                allowed_origins: origins.clone(),
                created_at: unix_now(),
            }
            .validated()?;
            let (store, _guard) = open(&node).await?;
            add_tenant(&*store, tenant, update, name.is_some(), !origins.is_empty()).await
        }
        AdminCommand::AddUser {
            tenant,
            user,
            update,
            node,
        } => {
            let tenant = TenantId::parse(&tenant)?;
            let user = UserName::parse(&user)?;
            let password = read_password(stdin, &tenant, &user)?;
            let (store, _guard) = open(&node).await?;
            if store.tenant(&tenant).await?.is_none() {
                return Err(AccountError::NoSuchTenant(tenant).into());
            }
            let hash = tokio::task::spawn_blocking(move || hash_password(&password))
                .await
                .map_err(|e| CliError::Store(format!("hashing failed: {e}")))?
                .map_err(|e| CliError::Store(e.to_string()))?;
            let new = AdminUser {
                tenant: tenant.clone(),
                name: user.clone(),
                password_hash: hash.clone(),
                created_at: unix_now(),
            };
            match store.create_user(&new).await {
                Ok(()) => Ok(format!("added user {user} to tenant {tenant}\n")),
                Err(AccountError::UserExists { .. }) if update => {
                    store.set_password(&tenant, &user, &hash).await?;
                    Ok(format!(
                        "set a new password for user {user} of tenant {tenant}\n"
                    ))
                }
                Err(e) => Err(e.into()),
            }
        }
        AdminCommand::List { node } => {
            let (store, _guard) = open(&node).await?;
            list(&*store).await
        }
        AdminCommand::AcknowledgeStoreWipe { node } => acknowledge_store_wipe(&node).await,
    }
}

/// Removes the store's wipe mark (only a Redis store can be wiped under
/// running nodes).
async fn acknowledge_store_wipe(node: &ServeArgs) -> Result<String, CliError> {
    let store = node
        .store_settings()
        .map_err(|e| CliError::Input(e.to_string()))?;
    let Some(url) = store.redis_url else {
        return Ok(
            "the embedded store cannot be wiped under a running node: nothing to acknowledge\n"
                .into(),
        );
    };
    let timeout = store.store_timeout.max(Duration::from_secs(5));
    let client = super::redis::connect(&url, timeout)
        .await
        .map_err(|e| CliError::Store(e.to_string()))?;
    let _guard = Guard(Some(client.clone()));
    let removed = crate::store::acknowledge_wipe(&client.clone().into(), &store.redis_prefix)
        .await
        .map_err(|e| CliError::Store(e.to_string()))?;
    Ok(if removed {
        "store wipe acknowledged: device ids may be registered without their token again\n".into()
    } else {
        "the store is not marked wiped: nothing to acknowledge\n".into()
    })
}

async fn add_tenant(
    store: &dyn AccountStore,
    tenant: Tenant,
    update: bool,
    name_given: bool,
    origins_given: bool,
) -> Result<String, CliError> {
    match store.create_tenant(&tenant).await {
        Ok(()) => Ok(format!("added tenant {}\n", tenant.id)),
        Err(AccountError::TenantExists(_)) if update => {
            let Some(mut stored) = store.tenant(&tenant.id).await? else {
                return Err(AccountError::NoSuchTenant(tenant.id).into());
            };
            if name_given {
                stored.name = tenant.name;
            }
            if origins_given {
                stored.allowed_origins = tenant.allowed_origins;
            }
            store.update_tenant(&stored).await?;
            Ok(format!("updated tenant {}\n", stored.id))
        }
        Err(e) => Err(e.into()),
    }
}

async fn list(store: &dyn AccountStore) -> Result<String, CliError> {
    let tenants = store.tenants().await?;
    if tenants.is_empty() {
        return Ok("no tenants\n".into());
    }
    let mut out = String::new();
    for t in tenants {
        out.push_str(&format!(
            "tenant {} ({}), created {}\n",
            t.id,
            t.name,
            time(t.created_at)
        ));
        for o in &t.allowed_origins {
            out.push_str(&format!("  origin {o}\n"));
        }
        for u in store.users(&t.id).await? {
            out.push_str(&format!(
                "  user {}, created {}\n",
                u.name,
                time(u.created_at)
            ));
        }
    }
    Ok(out)
}

fn time(unix: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The first line of `stdin`, checked as a new password.
fn read_password(
    stdin: &mut dyn BufRead,
    tenant: &TenantId,
    user: &UserName,
) -> Result<Password, CliError> {
    if std::io::stdin().is_terminal() {
        eprint!(
            "password for {user} of tenant {tenant} (one line, at least 12 characters; \
             it is shown as typed, so prefer piping it): "
        );
    }
    let mut line = String::new();
    stdin
        .take(MAX_PASSWORD_BYTES as u64 + 2)
        .read_line(&mut line)
        .map_err(|e| CliError::Input(format!("cannot read the password from stdin: {e}")))?;
    let line = line.strip_suffix('\n').unwrap_or(&line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let password = Password::new(line);
    password.check_new().map_err(|e| {
        CliError::Input(format!("{e} (send it as the first line of standard input)"))
    })?;
    Ok(password)
}

/// Keeps the Redis client open while the command runs; quits it on drop.
struct Guard(Option<fred::prelude::Client>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let (Some(client), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                let _ = fred::prelude::ClientLike::quit(&client).await;
            });
        }
    }
}

/// The store `serve` would use with the same flags and environment.
async fn open(node: &ServeArgs) -> Result<(Box<dyn AccountStore>, Guard), CliError> {
    let store = node
        .store_settings()
        .map_err(|e| CliError::Input(e.to_string()))?;
    match store.redis_url {
        Some(url) => {
            let timeout = store.store_timeout.max(Duration::from_secs(5));
            let client = super::redis::connect(&url, timeout)
                .await
                .map_err(|e| CliError::Store(e.to_string()))?;
            let accounts = RedisAccountStore::new(client.clone(), &store.redis_prefix);
            Ok((Box::new(accounts), Guard(Some(client))))
        }
        None => Ok((
            Box::new(MemoryAccountStore::open(store.data_dir.join(ACCOUNTS_FILE))),
            Guard(None),
        )),
    }
}

/// The accounts file of a single node, in its data directory.
pub const ACCOUNTS_FILE: &str = "accounts.json";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> AdminCommand {
        let mut full = vec!["pace-node", "admin"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full).unwrap().command {
            Some(Command::Admin(cmd)) => cmd,
            other => panic!("{other:?}"),
        }
    }

    async fn exec(dir: &std::path::Path, args: &[&str], stdin: &str) -> Result<String, CliError> {
        let mut all = args.to_vec();
        let data = dir.to_string_lossy().into_owned();
        all.extend_from_slice(&["--data-dir", &data]);
        run(parse(&all), &mut stdin.as_bytes()).await
    }

    #[tokio::test]
    async fn tenants_and_users_are_added_and_listed_without_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let out = exec(
            d,
            &[
                "add-tenant",
                "acme",
                "--name",
                "Acme",
                "--origin",
                "https://Shop.acme.example",
            ],
            "",
        )
        .await
        .unwrap();
        assert_eq!(out, "added tenant acme\n");
        let pw = super::super::password::TEST_PASSWORD;
        let out = exec(
            d,
            &["add-user", "--tenant", "acme", "alice"],
            &format!("{pw}\n"),
        )
        .await
        .unwrap();
        assert_eq!(out, "added user alice to tenant acme\n");

        let store = MemoryAccountStore::open(d.join(ACCOUNTS_FILE));
        let (t, u) = (
            TenantId::parse("acme").unwrap(),
            UserName::parse("alice").unwrap(),
        );
        let alice = store.user(&t, &u).await.unwrap().unwrap();
        assert!(super::super::verify_password(
            &Password::new(pw),
            Some(&alice.password_hash)
        ));

        let out = exec(d, &["list"], "").await.unwrap();
        assert!(out.contains("tenant acme (Acme)"), "{out}");
        assert!(
            out.contains("  origin https://shop.acme.example\n"),
            "{out}"
        );
        assert!(out.contains("  user alice, created "), "{out}");
        assert!(!out.contains("argon2") && !out.contains(pw), "{out}");
    }

    #[tokio::test]
    async fn existing_accounts_need_update_and_inputs_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pw = "first password 1\r\n";
        // No tenant yet.
        let e = exec(d, &["add-user", "--tenant", "acme", "alice"], pw)
            .await
            .unwrap_err();
        assert_eq!((e.exit_code(), e.to_string()), (2, "no tenant acme".into()));
        exec(d, &["add-tenant", "acme"], "").await.unwrap();
        let e = exec(d, &["add-tenant", "acme"], "").await.unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("already exists"), "{e}");
        let out = exec(
            d,
            &["add-tenant", "acme", "--update", "--name", "Acme 2"],
            "",
        )
        .await
        .unwrap();
        assert_eq!(out, "updated tenant acme\n");

        exec(d, &["add-user", "--tenant", "acme", "alice"], pw)
            .await
            .unwrap();
        let e = exec(d, &["add-user", "--tenant", "acme", "alice"], pw)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("--update"), "{e}");
        let out = exec(
            d,
            &["add-user", "--tenant", "acme", "alice", "--update"],
            "second password 2\n",
        )
        .await
        .unwrap();
        assert!(out.starts_with("set a new password"), "{out}");
        let store = MemoryAccountStore::open(d.join(ACCOUNTS_FILE));
        let alice = store
            .user(
                &TenantId::parse("acme").unwrap(),
                &UserName::parse("alice").unwrap(),
            )
            .await
            .unwrap()
            .unwrap();
        assert!(super::super::verify_password(
            &Password::new("second password 2"),
            Some(&alice.password_hash)
        ));
        assert_eq!(
            store
                .tenant(&TenantId::parse("acme").unwrap())
                .await
                .unwrap()
                .unwrap()
                .name,
            "Acme 2"
        );

        for (args, stdin, want) in [
            (&["add-user", "--tenant", "acme", "bob"][..], "", "empty"),
            (&["add-user", "--tenant", "acme", "bob"][..], "\n", "empty"),
            (
                &["add-user", "--tenant", "acme", "bob"][..],
                "short\n",
                "at least 12",
            ),
            (
                &["add-user", "--tenant", "acme", "b b"][..],
                "long enough pw\n",
                "user name",
            ),
            (&["add-tenant", "a/b"][..], "", "tenant id"),
            (
                &["add-tenant", "x", "--origin", "shop.example"][..],
                "",
                "origin",
            ),
        ] {
            let e = exec(d, args, stdin).await.unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
            assert!(e.to_string().contains(want), "{args:?}: {e}");
        }
        let long = format!("{}\n", "x".repeat(MAX_PASSWORD_BYTES + 10));
        let e = exec(d, &["add-user", "--tenant", "acme", "bob"], &long)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_store_exits_1() {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("redis://127.0.0.1:{port}");
        let e = exec(
            dir.path(),
            &["list", "--redis", &url, "--store-timeout", "200ms"],
            "",
        )
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), 1, "{e}");
        // A bad flag value is bad input.
        let e = exec(dir.path(), &["list", "--redis-prefix", "a:b"], "")
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
    }
}
