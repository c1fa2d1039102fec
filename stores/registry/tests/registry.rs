//! Conformance suite of the registry: one body per behaviour (`cases`), run once per engine
//! by a module that gives each test a fresh, empty store (`sqlite`, `postgres`; see
//! `support` for the PostgreSQL database per test), plus the secret helpers (`secrets`).

use std::future::Future;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use fleet_registry::{
    hash_secret, new_secret, open_registry, verify_secret, IngestKeyRefusal, NewAgent,
    NewIngestKey, NewToken, NewUser, RedeemRefusal, Registry, RequestKeyClaim, Role, StoreError,
    Tenant, INGEST_KEY_PREFIX, INGEST_KEY_TOUCH_INTERVAL,
};

/// The same list of cases for every engine: each module defines `run` and calls this.
macro_rules! conformance {
    () => {
        conformance!(
            tenants_are_created_listed_and_unique,
            locations_belong_to_a_tenant_and_are_unique_within_it,
            tokens_are_listed_without_secrets,
            tokens_need_their_tenant_and_its_location,
            redeem_returns_the_token_binding_and_stores_the_credential,
            second_redeem_is_used,
            expired_token_is_refused,
            unknown_secret_is_refused,
            concurrent_redemptions_of_one_token_exactly_one_wins,
            concurrent_redemptions_of_many_tokens_all_win,
            duplicate_agent_id_is_a_conflict_and_keeps_the_token,
            deactivate_is_tenant_restricted_and_idempotent,
            users_are_created_listed_and_checked,
            users_can_be_disabled_and_enabled,
            api_keys_resolve_to_their_user_and_are_unique,
            api_keys_are_revoked_one_by_one,
            request_keys_bind_one_request,
            ingest_keys_are_listed_per_tenant_without_secrets,
            ingest_keys_authenticate_to_their_tenant_until_revoked,
            ingest_key_revocation_is_tenant_restricted,
            ingest_key_use_is_recorded_at_most_once_a_minute,
        );
    };
    ($($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() -> anyhow::Result<()> {
                run(crate::cases::$case).await
            }
        )+
    };
}

/// Tests of the SQLite engine, each on a new file in a temporary directory.
mod sqlite {
    use super::*;

    async fn run<F, Fut>(case: F) -> Result<()>
    where
        F: FnOnce(Arc<dyn Registry>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("registry.db");
        case(open_registry(path.to_str().context("utf-8 temp path")?).await?).await
    }

    conformance!();

    #[tokio::test]
    async fn data_survives_reopening() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("fleet.db").display());
        let registry = open_registry(&url).await?;
        let tenant = registry.create_tenant("Acme", 1).await?;
        drop(registry);

        // Migrations run again on an up-to-date database and change nothing.
        let registry = open_registry(&url).await?;
        ensure!(registry.get_tenant(&tenant.tenant_id).await? == Some(tenant));
        Ok(())
    }
}

/// Tests of the PostgreSQL engine, each on its own new database.
mod postgres {
    use super::*;

    async fn run<F, Fut>(case: F) -> Result<()>
    where
        F: FnOnce(Arc<dyn Registry>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        fleet_test_support::services::with_fresh_database(|url| async move {
            ensure!(url.starts_with("postgres"), "a PostgreSQL URL: {url}");
            case(open_registry(&url).await?).await
        })
        .await
    }

    conformance!();
}

/// The secret helpers.
mod secrets {
    use super::*;

    #[test]
    fn hash_is_sha256() {
        let hex: String = hash_secret("abc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn verify_accepts_only_the_secret() {
        let secret = new_secret("fsa_");
        let hash = hash_secret(&secret);
        assert!(verify_secret(&secret, &hash));
        assert!(!verify_secret(&new_secret("fsa_"), &hash));
        assert!(!verify_secret(&secret[..secret.len() - 1], &hash));
        assert!(!verify_secret("", &hash));
        let mut flipped = hash;
        flipped[31] ^= 1;
        assert!(!verify_secret(&secret, &flipped));
    }

    #[test]
    fn new_secrets_are_prefixed_url_safe_and_distinct() {
        let secrets: std::collections::HashSet<String> =
            (0..1000).map(|_| new_secret("fst_")).collect();
        assert_eq!(secrets.len(), 1000, "no repeats");
        for s in &secrets {
            let body = s.strip_prefix("fst_").expect("prefixed");
            // 32 bytes in unpadded base64: ceil(256 / 6) = 43 characters.
            assert_eq!(body.len(), 43, "{s}");
            assert!(
                body.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
                "URL-safe: {s}"
            );
        }
        assert!(new_secret("fsa_").starts_with("fsa_"));
        assert_eq!(new_secret("").len(), 43);
    }
}

/// The behaviours, written once against the trait.
mod cases {
    use super::*;

    const SECOND: i64 = 1_000_000;
    /// 2025-01-01T00:00:00Z in µs.
    const T0: i64 = 1_735_689_600 * SECOND;
    const HOUR: i64 = 3600 * SECOND;

    fn token(tenant: &Tenant) -> NewToken {
        NewToken {
            tenant_id: tenant.tenant_id.clone(),
            location_id: None,
            device_name: None,
            expires_at: T0 + HOUR,
            created_by: "admin@example.com".into(),
            created_at: T0,
        }
    }

    fn agent(at: i64) -> (NewAgent, String) {
        let credential = new_secret("fsa_");
        let agent = NewAgent {
            agent_id: uuid::Uuid::new_v4().to_string(),
            credential_hash: hash_secret(&credential),
            facts_json: r#"{"hostname":"web-1","os":"linux"}"#.into(),
            now: at,
        };
        (agent, credential)
    }

    /// A tenant with a stored token; returns the token's secret.
    async fn tenant_with_token(store: &Arc<dyn Registry>, name: &str) -> Result<(Tenant, String)> {
        let tenant = store.create_tenant(name, T0).await?;
        let secret = new_secret("fst_");
        store
            .create_token(&token(&tenant), hash_secret(&secret))
            .await?;
        Ok((tenant, secret))
    }

    pub(crate) async fn tenants_are_created_listed_and_unique(
        store: Arc<dyn Registry>,
    ) -> Result<()> {
        ensure!(store.list_tenants().await?.is_empty());
        let zeta = store.create_tenant("Zeta Ltd", T0).await?;
        let acme = store.create_tenant("Acme", T0 + 1).await?;
        ensure!(acme.name == "Acme" && acme.created_at == T0 + 1);
        ensure!(uuid::Uuid::parse_str(&acme.tenant_id)?.get_version_num() == 4);
        ensure!(acme.tenant_id != zeta.tenant_id);

        let listed = store.list_tenants().await?;
        ensure!(listed == vec![acme.clone(), zeta], "by name: {listed:?}");
        ensure!(store.get_tenant(&acme.tenant_id).await? == Some(acme));
        ensure!(store.get_tenant("no-such-tenant").await?.is_none());

        match store.create_tenant("Acme", T0 + 2).await {
            Err(StoreError::Conflict(m)) => ensure!(m.contains("Acme"), "names it: {m}"),
            other => anyhow::bail!("expected Conflict, got {other:?}"),
        }
        ensure!(store.list_tenants().await?.len() == 2);
        ensure!(matches!(
            store.create_tenant("  ", T0).await,
            Err(StoreError::InvalidQuery(_))
        ));
        Ok(())
    }

    pub(crate) async fn locations_belong_to_a_tenant_and_are_unique_within_it(
        store: Arc<dyn Registry>,
    ) -> Result<()> {
        let a = store.create_tenant("A", T0).await?;
        let b = store.create_tenant("B", T0).await?;
        let north = store.create_location(&a.tenant_id, "North", T0).await?;
        let hq = store.create_location(&a.tenant_id, "HQ", T0 + 1).await?;
        ensure!(north.tenant_id == a.tenant_id && north.name == "North");
        // The same name in another tenant is fine.
        let b_hq = store.create_location(&b.tenant_id, "HQ", T0).await?;

        ensure!(store.list_locations(&a.tenant_id).await? == vec![hq, north]);
        ensure!(store.list_locations(&b.tenant_id).await? == vec![b_hq]);
        ensure!(store.list_locations("no-such-tenant").await?.is_empty());

        match store.create_location(&a.tenant_id, "HQ", T0 + 2).await {
            Err(StoreError::Conflict(m)) => ensure!(m.contains("HQ"), "names it: {m}"),
            other => anyhow::bail!("expected Conflict, got {other:?}"),
        }
        match store.create_location("no-such-tenant", "X", T0).await {
            Err(StoreError::NotFound(m)) => ensure!(m.contains("no-such-tenant"), "{m}"),
            other => anyhow::bail!("expected NotFound, got {other:?}"),
        }
        ensure!(store.list_locations(&a.tenant_id).await?.len() == 2);
        Ok(())
    }

    pub(crate) async fn tokens_are_listed_without_secrets(store: Arc<dyn Registry>) -> Result<()> {
        let tenant = store.create_tenant("Acme", T0).await?;
        let other = store.create_tenant("Other", T0).await?;
        let site = store.create_location(&tenant.tenant_id, "Site", T0).await?;
        let secret = new_secret("fst_");
        let first = store
            .create_token(
                &NewToken {
                    location_id: Some(site.location_id.clone()),
                    device_name: Some("web-1".into()),
                    ..token(&tenant)
                },
                hash_secret(&secret),
            )
            .await?;
        ensure!(first.location_id.as_deref() == Some(site.location_id.as_str()));
        ensure!(first.device_name.as_deref() == Some("web-1"));
        ensure!(first.used_at.is_none() && first.used_by_agent.is_none());
        let second = store
            .create_token(
                &NewToken {
                    created_at: T0 + SECOND,
                    ..token(&tenant)
                },
                hash_secret(&new_secret("fst_")),
            )
            .await?;

        let listed = store.list_tokens(&tenant.tenant_id).await?;
        ensure!(
            listed == vec![second, first.clone()],
            "newest first: {listed:?}"
        );
        ensure!(store.list_tokens(&other.tenant_id).await?.is_empty());
        // Nothing listed (or debug-printed) carries the secret or its hash.
        let shown = format!("{listed:?} {}", serde_json::to_string(&listed)?);
        let hash_hex: String = hash_secret(&secret)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ensure!(!shown.contains(&secret) && !shown.contains(&hash_hex));

        // The same secret twice clashes (never happens with random secrets, but must not
        // make two tokens redeemable with one secret).
        match store
            .create_token(&token(&tenant), hash_secret(&secret))
            .await
        {
            Err(StoreError::Conflict(_)) => {}
            other => anyhow::bail!("expected Conflict, got {other:?}"),
        }
        match store
            .create_token(
                &NewToken {
                    expires_at: T0,
                    ..token(&tenant)
                },
                hash_secret(&new_secret("fst_")),
            )
            .await
        {
            Err(StoreError::InvalidQuery(_)) => {}
            other => anyhow::bail!("expected InvalidQuery for a token born expired, got {other:?}"),
        }
        ensure!(store.list_tokens(&tenant.tenant_id).await?.len() == 2);
        Ok(())
    }

    pub(crate) async fn tokens_need_their_tenant_and_its_location(
        store: Arc<dyn Registry>,
    ) -> Result<()> {
        let a = store.create_tenant("A", T0).await?;
        let b = store.create_tenant("B", T0).await?;
        let b_site = store.create_location(&b.tenant_id, "Site", T0).await?;

        let unknown_tenant = NewToken {
            tenant_id: "no-such-tenant".into(),
            ..token(&a)
        };
        match store
            .create_token(&unknown_tenant, hash_secret(&new_secret("fst_")))
            .await
        {
            Err(StoreError::NotFound(m)) => ensure!(m.contains("no-such-tenant"), "{m}"),
            other => anyhow::bail!("expected NotFound, got {other:?}"),
        }
        let foreign_location = NewToken {
            location_id: Some(b_site.location_id.clone()),
            ..token(&a)
        };
        match store
            .create_token(&foreign_location, hash_secret(&new_secret("fst_")))
            .await
        {
            Err(StoreError::NotFound(m)) => ensure!(m.contains(&b_site.location_id), "{m}"),
            other => {
                anyhow::bail!("expected NotFound for another tenant's location, got {other:?}")
            }
        }
        let unknown_location = NewToken {
            location_id: Some("no-such-location".into()),
            ..token(&a)
        };
        match store
            .create_token(&unknown_location, hash_secret(&new_secret("fst_")))
            .await
        {
            Err(StoreError::NotFound(m)) => ensure!(m.contains("no-such-location"), "{m}"),
            other => anyhow::bail!("expected NotFound, got {other:?}"),
        }
        ensure!(store.list_tokens(&a.tenant_id).await?.is_empty());
        ensure!(store.list_tokens(&b.tenant_id).await?.is_empty());
        Ok(())
    }

    pub(crate) async fn redeem_returns_the_token_binding_and_stores_the_credential(
        store: Arc<dyn Registry>,
    ) -> Result<()> {
        let tenant = store.create_tenant("Acme", T0).await?;
        let site = store.create_location(&tenant.tenant_id, "Site", T0).await?;
        let secret = new_secret("fst_");
        let info = store
            .create_token(
                &NewToken {
                    location_id: Some(site.location_id.clone()),
                    device_name: Some("web-1".into()),
                    ..token(&tenant)
                },
                hash_secret(&secret),
            )
            .await?;

        let (new_agent, credential) = agent(T0 + 60 * SECOND);
        let redeemed = store
            .redeem_token(hash_secret(&secret), &new_agent)
            .await?
            .map_err(|r| anyhow::anyhow!("refused: {r:?}"))?;
        ensure!(redeemed.token_id == info.token_id);
        ensure!(redeemed.tenant_id == tenant.tenant_id);
        ensure!(redeemed.location_id.as_deref() == Some(site.location_id.as_str()));
        ensure!(redeemed.device_name.as_deref() == Some("web-1"));

        let stored = store
            .agent_credential(&new_agent.agent_id)
            .await?
            .context("credential stored")?;
        ensure!(stored.agent_id == new_agent.agent_id);
        ensure!(stored.tenant_id == tenant.tenant_id);
        ensure!(stored.location_id.as_deref() == Some(site.location_id.as_str()));
        ensure!(stored.active);
        ensure!(verify_secret(&credential, &stored.credential_hash));
        ensure!(!verify_secret(&secret, &stored.credential_hash));
        ensure!(store.agent_credential("no-such-agent").await?.is_none());

        let listed = store.list_tokens(&tenant.tenant_id).await?;
        ensure!(listed.len() == 1);
        ensure!(listed[0].used_at == Some(T0 + 60 * SECOND));
        ensure!(listed[0].used_by_agent.as_deref() == Some(new_agent.agent_id.as_str()));
        Ok(())
    }

    pub(crate) async fn second_redeem_is_used(store: Arc<dyn Registry>) -> Result<()> {
        let (_, secret) = tenant_with_token(&store, "Acme").await?;
        let (first, _) = agent(T0 + SECOND);
        ensure!(store
            .redeem_token(hash_secret(&secret), &first)
            .await?
            .is_ok());
        let (second, _) = agent(T0 + 2 * SECOND);
        let outcome = store.redeem_token(hash_secret(&secret), &second).await?;
        ensure!(outcome == Err(RedeemRefusal::Used), "got {outcome:?}");
        ensure!(store.agent_credential(&second.agent_id).await?.is_none());
        // Still Used (not Expired) once the expiry has passed.
        let (late, _) = agent(T0 + 2 * HOUR);
        let outcome = store.redeem_token(hash_secret(&secret), &late).await?;
        ensure!(outcome == Err(RedeemRefusal::Used), "got {outcome:?}");
        Ok(())
    }

    pub(crate) async fn expired_token_is_refused(store: Arc<dyn Registry>) -> Result<()> {
        let (tenant, secret) = tenant_with_token(&store, "Acme").await?;
        // The expiry instant itself is too late.
        let (late, _) = agent(T0 + HOUR);
        let outcome = store.redeem_token(hash_secret(&secret), &late).await?;
        ensure!(outcome == Err(RedeemRefusal::Expired), "got {outcome:?}");
        ensure!(store.agent_credential(&late.agent_id).await?.is_none());
        let listed = store.list_tokens(&tenant.tenant_id).await?;
        ensure!(listed[0].used_at.is_none(), "a refusal changes nothing");
        // A moment earlier it works.
        let (in_time, _) = agent(T0 + HOUR - 1);
        ensure!(store
            .redeem_token(hash_secret(&secret), &in_time)
            .await?
            .is_ok());
        Ok(())
    }

    pub(crate) async fn unknown_secret_is_refused(store: Arc<dyn Registry>) -> Result<()> {
        let (_, secret) = tenant_with_token(&store, "Acme").await?;
        let (a, _) = agent(T0 + SECOND);
        let outcome = store
            .redeem_token(hash_secret(&new_secret("fst_")), &a)
            .await?;
        ensure!(outcome == Err(RedeemRefusal::Unknown), "got {outcome:?}");
        // A near miss of the real secret is just as unknown.
        let outcome = store
            .redeem_token(hash_secret(&format!("{secret}x")), &a)
            .await?;
        ensure!(outcome == Err(RedeemRefusal::Unknown), "got {outcome:?}");
        ensure!(store.agent_credential(&a.agent_id).await?.is_none());
        Ok(())
    }

    pub(crate) async fn concurrent_redemptions_of_one_token_exactly_one_wins(
        store: Arc<dyn Registry>,
    ) -> Result<()> {
        let (tenant, secret) = tenant_with_token(&store, "Acme").await?;
        let hash = hash_secret(&secret);
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16i64)
            .map(|i| {
                let store = Arc::clone(&store);
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    let (new_agent, _) = agent(T0 + SECOND + i);
                    barrier.wait().await;
                    let outcome = store.redeem_token(hash, &new_agent).await;
                    (new_agent.agent_id, outcome)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for task in tasks {
            let (agent_id, outcome) = task.await?;
            // A store error (SQLITE_BUSY, a deadlock) fails the test: contention must wait.
            match outcome? {
                Ok(redeemed) => {
                    ensure!(redeemed.tenant_id == tenant.tenant_id);
                    winners.push(agent_id);
                }
                Err(refusal) => {
                    ensure!(refusal == RedeemRefusal::Used, "loser got {refusal:?}");
                    losers.push(agent_id);
                }
            }
        }
        ensure!(winners.len() == 1, "exactly one winner: {winners:?}");
        ensure!(losers.len() == 15);
        let winner = &winners[0];
        ensure!(store.agent_credential(winner).await?.is_some());
        for loser in &losers {
            ensure!(
                store.agent_credential(loser).await?.is_none(),
                "no credential for a loser"
            );
        }
        let listed = store.list_tokens(&tenant.tenant_id).await?;
        ensure!(listed[0].used_by_agent.as_ref() == Some(winner));
        Ok(())
    }

    pub(crate) async fn concurrent_redemptions_of_many_tokens_all_win(
        store: Arc<dyn Registry>,
    ) -> Result<()> {
        // Writers contend for the database (SQLite has one writer at a time): none may fail.
        let tenant = store.create_tenant("Acme", T0).await?;
        let mut secrets = Vec::new();
        for _ in 0..16 {
            let secret = new_secret("fst_");
            store
                .create_token(&token(&tenant), hash_secret(&secret))
                .await?;
            secrets.push(secret);
        }
        let tasks: Vec<_> = secrets
            .iter()
            .map(|secret| {
                let store = Arc::clone(&store);
                let hash = hash_secret(secret);
                tokio::spawn(async move {
                    let (new_agent, _) = agent(T0 + SECOND);
                    store.redeem_token(hash, &new_agent).await
                })
            })
            .collect();
        for task in tasks {
            let outcome = task.await??;
            ensure!(outcome.is_ok(), "every token redeems once: {outcome:?}");
        }
        let listed = store.list_tokens(&tenant.tenant_id).await?;
        ensure!(listed.iter().all(|t| t.used_at.is_some()));
        Ok(())
    }

    pub(crate) async fn duplicate_agent_id_is_a_conflict_and_keeps_the_token(
        store: Arc<dyn Registry>,
    ) -> Result<()> {
        let (tenant, first_secret) = tenant_with_token(&store, "Acme").await?;
        let second_secret = new_secret("fst_");
        store
            .create_token(&token(&tenant), hash_secret(&second_secret))
            .await?;
        let (new_agent, _) = agent(T0 + SECOND);
        ensure!(store
            .redeem_token(hash_secret(&first_secret), &new_agent)
            .await?
            .is_ok());
        // The same agent id again: the credential cannot be stored, so the transaction
        // rolls back and the second token stays unused.
        match store
            .redeem_token(hash_secret(&second_secret), &new_agent)
            .await
        {
            Err(StoreError::Conflict(m)) => ensure!(m.contains(&new_agent.agent_id), "{m}"),
            other => anyhow::bail!("expected Conflict, got {other:?}"),
        }
        let unused = store
            .list_tokens(&tenant.tenant_id)
            .await?
            .into_iter()
            .filter(|t| t.used_at.is_none())
            .count();
        ensure!(unused == 1, "the second token is still redeemable");
        let (other_agent, _) = agent(T0 + 2 * SECOND);
        ensure!(store
            .redeem_token(hash_secret(&second_secret), &other_agent)
            .await?
            .is_ok());
        Ok(())
    }

    pub(crate) async fn deactivate_is_tenant_restricted_and_idempotent(
        store: Arc<dyn Registry>,
    ) -> Result<()> {
        let (tenant, secret) = tenant_with_token(&store, "Acme").await?;
        let other = store.create_tenant("Other", T0).await?;
        let (new_agent, credential) = agent(T0 + SECOND);
        ensure!(store
            .redeem_token(hash_secret(&secret), &new_agent)
            .await?
            .is_ok());
        let id = new_agent.agent_id.as_str();

        ensure!(
            !store
                .deactivate_agent(Some(&other.tenant_id), id, T0 + 2 * SECOND)
                .await?,
            "another tenant cannot deactivate it"
        );
        ensure!(store.agent_credential(id).await?.context("stored")?.active);
        ensure!(!store.deactivate_agent(None, "no-such-agent", T0).await?);

        ensure!(
            store
                .deactivate_agent(Some(&tenant.tenant_id), id, T0 + 3 * SECOND)
                .await?
        );
        let stored = store.agent_credential(id).await?.context("still stored")?;
        ensure!(!stored.active);
        ensure!(
            verify_secret(&credential, &stored.credential_hash),
            "the hash stays; the gateway checks `active`"
        );
        ensure!(
            !store.deactivate_agent(None, id, T0 + 4 * SECOND).await?,
            "already inactive"
        );
        ensure!(
            !store
                .deactivate_agent(Some(&tenant.tenant_id), id, T0 + 4 * SECOND)
                .await?
        );

        // Without a tenant restriction (admin) it works too.
        let second = new_secret("fst_");
        store
            .create_token(&token(&tenant), hash_secret(&second))
            .await?;
        let (admin_target, _) = agent(T0 + 5 * SECOND);
        ensure!(store
            .redeem_token(hash_secret(&second), &admin_target)
            .await?
            .is_ok());
        ensure!(
            store
                .deactivate_agent(None, &admin_target.agent_id, T0 + 6 * SECOND)
                .await?
        );
        ensure!(
            !store
                .agent_credential(&admin_target.agent_id)
                .await?
                .context("stored")?
                .active
        );
        Ok(())
    }

    fn user(name: &str, role: Role, tenant: Option<&Tenant>) -> NewUser {
        NewUser {
            name: name.into(),
            role,
            tenant_id: tenant.map(|t| t.tenant_id.clone()),
            created_at: T0,
        }
    }

    pub(crate) async fn users_are_created_listed_and_checked(
        store: Arc<dyn Registry>,
    ) -> Result<()> {
        ensure!(store.list_users().await?.is_empty());
        let acme = store.create_tenant("Acme", T0).await?;
        let root = store.create_user(&user("root", Role::Admin, None)).await?;
        ensure!(root.role == Role::Admin && root.tenant_id.is_none() && !root.disabled);
        ensure!(uuid::Uuid::parse_str(&root.user_id)?.get_version_num() == 4);
        let bob = store
            .create_user(&user("bob", Role::Operator, Some(&acme)))
            .await?;
        ensure!(bob.tenant_id.as_deref() == Some(acme.tenant_id.as_str()));
        let vic = store
            .create_user(&user("vic", Role::Viewer, Some(&acme)))
            .await?;
        let listed = store.list_users().await?;
        ensure!(
            listed == vec![bob.clone(), root.clone(), vic.clone()],
            "by name: {listed:?}"
        );
        ensure!(store.get_user(&bob.user_id).await? == Some(bob.clone()));
        ensure!(store.get_user("no-such-user").await?.is_none());

        let dup = store
            .create_user(&user("bob", Role::Viewer, Some(&acme)))
            .await;
        ensure!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        let admin_with_tenant = store
            .create_user(&user("x", Role::Admin, Some(&acme)))
            .await;
        ensure!(
            matches!(admin_with_tenant, Err(StoreError::InvalidQuery(_))),
            "{admin_with_tenant:?}"
        );
        let operator_without = store.create_user(&user("y", Role::Operator, None)).await;
        ensure!(
            matches!(operator_without, Err(StoreError::InvalidQuery(_))),
            "{operator_without:?}"
        );
        let unknown_tenant = store
            .create_user(&NewUser {
                tenant_id: Some("no-such-tenant".into()),
                ..user("z", Role::Viewer, None)
            })
            .await;
        ensure!(
            matches!(unknown_tenant, Err(StoreError::NotFound(_))),
            "{unknown_tenant:?}"
        );
        let blank = store.create_user(&user("  ", Role::Admin, None)).await;
        ensure!(
            matches!(blank, Err(StoreError::InvalidQuery(_))),
            "{blank:?}"
        );
        ensure!(
            store.list_users().await?.len() == 3,
            "refusals store nothing"
        );
        Ok(())
    }

    pub(crate) async fn users_can_be_disabled_and_enabled(store: Arc<dyn Registry>) -> Result<()> {
        let acme = store.create_tenant("Acme", T0).await?;
        let bob = store
            .create_user(&user("bob", Role::Operator, Some(&acme)))
            .await?;
        ensure!(store.set_user_disabled(&bob.user_id, true).await?);
        ensure!(
            store
                .get_user(&bob.user_id)
                .await?
                .context("stored")?
                .disabled
        );
        ensure!(store.set_user_disabled(&bob.user_id, false).await?);
        ensure!(
            !store
                .get_user(&bob.user_id)
                .await?
                .context("stored")?
                .disabled
        );
        ensure!(!store.set_user_disabled("no-such-user", true).await?);
        Ok(())
    }

    pub(crate) async fn api_keys_resolve_to_their_user_and_are_unique(
        store: Arc<dyn Registry>,
    ) -> Result<()> {
        let acme = store.create_tenant("Acme", T0).await?;
        let bob = store
            .create_user(&user("bob", Role::Operator, Some(&acme)))
            .await?;
        let secret = new_secret("fsu_");
        let last4 = &secret[secret.len() - 4..];
        let first = store
            .create_api_key(&bob.user_id, hash_secret(&secret), last4, T0)
            .await?;
        ensure!(first.user_id == bob.user_id && first.last4 == last4);
        let second = store
            .create_api_key(
                &bob.user_id,
                hash_secret(&new_secret("fsu_")),
                "abcd",
                T0 + 1,
            )
            .await?;
        ensure!(
            store.list_api_keys(&bob.user_id).await? == vec![second.clone(), first.clone()],
            "newest first"
        );

        let owner = store
            .key_owner(hash_secret(&secret))
            .await?
            .context("key found")?;
        ensure!(owner.user == bob && owner.key == first);
        ensure!(verify_secret(&secret, &owner.key_hash));
        ensure!(store.key_owner(hash_secret("fsu_wrong")).await?.is_none());

        store.set_user_disabled(&bob.user_id, true).await?;
        let owner = store
            .key_owner(hash_secret(&secret))
            .await?
            .context("a disabled user's key is still found")?;
        ensure!(owner.user.disabled, "and says so");

        let dup = store
            .create_api_key(&bob.user_id, hash_secret(&secret), last4, T0 + 2)
            .await;
        ensure!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        let unknown = store
            .create_api_key("no-such-user", hash_secret(&new_secret("fsu_")), "abcd", T0)
            .await;
        ensure!(
            matches!(unknown, Err(StoreError::NotFound(_))),
            "{unknown:?}"
        );
        let long = store
            .create_api_key(&bob.user_id, hash_secret(&new_secret("fsu_")), "abcde", T0)
            .await;
        ensure!(matches!(long, Err(StoreError::InvalidQuery(_))), "{long:?}");
        ensure!(store.list_api_keys(&bob.user_id).await?.len() == 2);
        ensure!(store.list_api_keys("no-such-user").await?.is_empty());
        Ok(())
    }

    pub(crate) async fn api_keys_are_revoked_one_by_one(store: Arc<dyn Registry>) -> Result<()> {
        let acme = store.create_tenant("Acme", T0).await?;
        let bob = store
            .create_user(&user("bob", Role::Operator, Some(&acme)))
            .await?;
        let alice = store
            .create_user(&user("alice", Role::Operator, Some(&acme)))
            .await?;
        let (s1, s2) = (new_secret("fsu_"), new_secret("fsu_"));
        let k1 = store
            .create_api_key(&bob.user_id, hash_secret(&s1), "aaaa", T0)
            .await?;
        let k2 = store
            .create_api_key(&bob.user_id, hash_secret(&s2), "bbbb", T0 + 1)
            .await?;
        ensure!(k1.revoked_at.is_none());
        // Another user's key id, or an unknown one, revokes nothing.
        ensure!(
            !store
                .revoke_api_key(&alice.user_id, &k1.key_id, T0 + 5)
                .await?
        );
        ensure!(
            !store
                .revoke_api_key(&bob.user_id, "no-such-key", T0 + 5)
                .await?
        );
        ensure!(
            store
                .revoke_api_key(&bob.user_id, &k1.key_id, T0 + 10)
                .await?
        );
        // Again: still there, the first time kept.
        ensure!(
            store
                .revoke_api_key(&bob.user_id, &k1.key_id, T0 + 20)
                .await?
        );
        let owner = store
            .key_owner(hash_secret(&s1))
            .await?
            .context("a revoked key is still found")?;
        ensure!(owner.key.revoked_at == Some(T0 + 10), "{:?}", owner.key);
        let other = store.key_owner(hash_secret(&s2)).await?.context("found")?;
        ensure!(
            other.key.revoked_at.is_none(),
            "only that key: {:?}",
            other.key
        );
        let listed = store.list_api_keys(&bob.user_id).await?;
        ensure!(
            listed
                .iter()
                .map(|k| (k.key_id.as_str(), k.revoked_at))
                .collect::<Vec<_>>()
                == vec![
                    (k2.key_id.as_str(), None),
                    (k1.key_id.as_str(), Some(T0 + 10))
                ],
            "{listed:?}"
        );
        Ok(())
    }

    pub(crate) async fn request_keys_bind_one_request(store: Arc<dyn Registry>) -> Result<()> {
        let id = uuid::Uuid::new_v4().to_string();
        let (a, b) = (hash_secret("request a"), hash_secret("request b"));
        ensure!(store.claim_request_key(&id, a, T0).await? == RequestKeyClaim::New);
        ensure!(store.claim_request_key(&id, a, T0 + 1).await? == RequestKeyClaim::Same);
        ensure!(store.claim_request_key(&id, b, T0 + 2).await? == RequestKeyClaim::Different);
        ensure!(store.claim_request_key(&id, a, T0 + 3).await? == RequestKeyClaim::Same);
        // Concurrent first claims of one id with different requests: exactly one is new,
        // and every other sees the winner's request as the same or a different one.
        let id = uuid::Uuid::new_v4().to_string();
        let claims = futures::future::join_all((0..8).map(|i| {
            let store = store.clone();
            let id = id.clone();
            async move {
                let hash = hash_secret(&format!("request {}", i % 2));
                (hash, store.claim_request_key(&id, hash, T0).await)
            }
        }))
        .await;
        let mut new = None;
        for (hash, claim) in &claims {
            if *claim.as_ref().map_err(|e| anyhow::anyhow!("{e}"))? == RequestKeyClaim::New {
                ensure!(new.is_none(), "two claims won: {claims:?}");
                new = Some(*hash);
            }
        }
        let winner = new.context("one claim wins")?;
        for (hash, claim) in &claims {
            let expected = if *hash == winner {
                [RequestKeyClaim::New, RequestKeyClaim::Same]
            } else {
                [RequestKeyClaim::Different, RequestKeyClaim::Different]
            };
            let got = *claim.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
            ensure!(expected.contains(&got), "{claims:?}");
        }
        Ok(())
    }

    fn ingest_key(tenant: &Tenant, name: &str, at: i64) -> NewIngestKey {
        NewIngestKey {
            tenant_id: tenant.tenant_id.clone(),
            name: name.into(),
            description: None,
            created_by: "op-a".into(),
            created_at: at,
        }
    }

    /// Stores a new ingest key; returns its secret and id.
    async fn stored_ingest_key(
        store: &Arc<dyn Registry>,
        key: &NewIngestKey,
    ) -> Result<(String, String)> {
        let secret = new_secret(INGEST_KEY_PREFIX);
        let info = store
            .create_ingest_key(key, hash_secret(&secret), &secret[secret.len() - 4..])
            .await?;
        Ok((secret, info.key_id))
    }

    pub(crate) async fn ingest_keys_are_listed_per_tenant_without_secrets(
        store: Arc<dyn Registry>,
    ) -> Result<()> {
        let a = store.create_tenant("A", T0).await?;
        let b = store.create_tenant("B", T0).await?;
        ensure!(store.list_ingest_keys(&a.tenant_id).await?.is_empty());
        let secret = new_secret(INGEST_KEY_PREFIX);
        let first = store
            .create_ingest_key(
                &NewIngestKey {
                    description: Some("remote-write from eu-1".into()),
                    ..ingest_key(&a, "prometheus", T0)
                },
                hash_secret(&secret),
                &secret[secret.len() - 4..],
            )
            .await?;
        ensure!(uuid::Uuid::parse_str(&first.key_id)?.get_version_num() == 4);
        ensure!(first.tenant_id == a.tenant_id && first.name == "prometheus");
        ensure!(first.description.as_deref() == Some("remote-write from eu-1"));
        ensure!(first.last4 == secret[secret.len() - 4..] && first.created_by == "op-a");
        ensure!(first.revoked_at.is_none() && first.last_used_at.is_none());
        // Names may repeat (a key is rotated by making a new one of the same name).
        let (_, second) = stored_ingest_key(&store, &ingest_key(&a, "prometheus", T0 + 1)).await?;
        let (_, b_key) = stored_ingest_key(&store, &ingest_key(&b, "telegraf", T0)).await?;

        let listed = store.list_ingest_keys(&a.tenant_id).await?;
        let ids: Vec<&str> = listed.iter().map(|k| k.key_id.as_str()).collect();
        ensure!(
            ids == [second.as_str(), first.key_id.as_str()],
            "newest first: {listed:?}"
        );
        ensure!(listed[1] == first, "{listed:?}");
        let b_listed = store.list_ingest_keys(&b.tenant_id).await?;
        ensure!(
            b_listed.len() == 1 && b_listed[0].key_id == b_key,
            "{b_listed:?}"
        );
        ensure!(store.list_ingest_keys("no-such-tenant").await?.is_empty());
        // Nothing listed (or debug-printed) carries the secret or its hash.
        let shown = format!("{listed:?} {}", serde_json::to_string(&listed)?);
        let hash_hex: String = hash_secret(&secret)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ensure!(!shown.contains(&secret) && !shown.contains(&hash_hex));

        // Refusals store nothing.
        let dup = store
            .create_ingest_key(&ingest_key(&a, "x", T0), hash_secret(&secret), "abcd")
            .await;
        ensure!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        let unknown = store
            .create_ingest_key(
                &NewIngestKey {
                    tenant_id: "no-such-tenant".into(),
                    ..ingest_key(&a, "x", T0)
                },
                hash_secret(&new_secret(INGEST_KEY_PREFIX)),
                "abcd",
            )
            .await;
        match unknown {
            Err(StoreError::NotFound(m)) => ensure!(m.contains("no-such-tenant"), "{m}"),
            other => anyhow::bail!("expected NotFound, got {other:?}"),
        }
        for bad in [
            ingest_key(&a, "  ", T0),
            NewIngestKey {
                description: Some(" ".into()),
                ..ingest_key(&a, "x", T0)
            },
        ] {
            let refused = store
                .create_ingest_key(&bad, hash_secret(&new_secret(INGEST_KEY_PREFIX)), "abcd")
                .await;
            ensure!(
                matches!(refused, Err(StoreError::InvalidQuery(_))),
                "{refused:?}"
            );
        }
        let long = store
            .create_ingest_key(
                &ingest_key(&a, "x", T0),
                hash_secret(&new_secret(INGEST_KEY_PREFIX)),
                "abcde",
            )
            .await;
        ensure!(matches!(long, Err(StoreError::InvalidQuery(_))), "{long:?}");
        ensure!(store.list_ingest_keys(&a.tenant_id).await?.len() == 2);
        Ok(())
    }

    pub(crate) async fn ingest_keys_authenticate_to_their_tenant_until_revoked(
        store: Arc<dyn Registry>,
    ) -> Result<()> {
        let a = store.create_tenant("A", T0).await?;
        let b = store.create_tenant("B", T0).await?;
        let (a_secret, a_id) = stored_ingest_key(&store, &ingest_key(&a, "prom", T0)).await?;
        let (b_secret, b_id) = stored_ingest_key(&store, &ingest_key(&b, "prom", T0)).await?;
        let auth = store
            .authenticate_ingest_key(&a_secret, T0 + SECOND)
            .await?
            .map_err(|r| anyhow::anyhow!("refused: {r:?}"))?;
        ensure!(
            auth.tenant_id == a.tenant_id && auth.key_id == a_id,
            "{auth:?}"
        );
        let auth = store
            .authenticate_ingest_key(&b_secret, T0 + SECOND)
            .await?
            .map_err(|r| anyhow::anyhow!("refused: {r:?}"))?;
        ensure!(
            auth.tenant_id == b.tenant_id && auth.key_id == b_id,
            "{auth:?}"
        );

        for wrong in [
            new_secret(INGEST_KEY_PREFIX),
            a_secret[..a_secret.len() - 1].to_owned(),
            format!("{a_secret}x"),
            String::new(),
        ] {
            let got = store.authenticate_ingest_key(&wrong, T0 + SECOND).await?;
            ensure!(got == Err(IngestKeyRefusal::Unknown), "{wrong}: {got:?}");
        }

        let revoked = store
            .revoke_ingest_key(None, &a_id, T0 + 2 * SECOND)
            .await?
            .context("revoked")?;
        ensure!(revoked.revoked_at == Some(T0 + 2 * SECOND), "{revoked:?}");
        let got = store
            .authenticate_ingest_key(&a_secret, T0 + 3 * SECOND)
            .await?;
        ensure!(got == Err(IngestKeyRefusal::Revoked), "{got:?}");
        // Only that key.
        ensure!(store
            .authenticate_ingest_key(&b_secret, T0 + 3 * SECOND)
            .await?
            .is_ok());
        // Revoked again: the first time stays.
        let again = store
            .revoke_ingest_key(Some(&a.tenant_id), &a_id, T0 + 9 * SECOND)
            .await?
            .context("still there")?;
        ensure!(again.revoked_at == Some(T0 + 2 * SECOND), "{again:?}");
        let listed = store.list_ingest_keys(&a.tenant_id).await?;
        ensure!(listed[0].revoked_at == Some(T0 + 2 * SECOND), "{listed:?}");
        Ok(())
    }

    pub(crate) async fn ingest_key_revocation_is_tenant_restricted(
        store: Arc<dyn Registry>,
    ) -> Result<()> {
        let a = store.create_tenant("A", T0).await?;
        let b = store.create_tenant("B", T0).await?;
        let (a_secret, a_id) = stored_ingest_key(&store, &ingest_key(&a, "prom", T0)).await?;
        ensure!(
            store
                .revoke_ingest_key(Some(&b.tenant_id), &a_id, T0 + SECOND)
                .await?
                .is_none(),
            "another tenant cannot revoke it"
        );
        ensure!(store
            .revoke_ingest_key(None, "no-such-key", T0 + SECOND)
            .await?
            .is_none());
        ensure!(store
            .revoke_ingest_key(Some(&a.tenant_id), "no-such-key", T0 + SECOND)
            .await?
            .is_none());
        ensure!(store
            .authenticate_ingest_key(&a_secret, T0 + 2 * SECOND)
            .await?
            .is_ok());
        let revoked = store
            .revoke_ingest_key(Some(&a.tenant_id), &a_id, T0 + 3 * SECOND)
            .await?
            .context("its own tenant revokes it")?;
        ensure!(revoked.key_id == a_id && revoked.tenant_id == a.tenant_id);
        ensure!(
            store
                .authenticate_ingest_key(&a_secret, T0 + 4 * SECOND)
                .await?
                == Err(IngestKeyRefusal::Revoked)
        );
        Ok(())
    }

    pub(crate) async fn ingest_key_use_is_recorded_at_most_once_a_minute(
        store: Arc<dyn Registry>,
    ) -> Result<()> {
        let a = store.create_tenant("A", T0).await?;
        let (secret, _) = stored_ingest_key(&store, &ingest_key(&a, "prom", T0)).await?;
        let last_used =
            || async { anyhow::Ok(store.list_ingest_keys(&a.tenant_id).await?[0].last_used_at) };
        ensure!(last_used().await?.is_none());
        let t1 = T0 + 10 * SECOND;
        for at in [t1, t1 + SECOND, t1 + INGEST_KEY_TOUCH_INTERVAL - 1] {
            ensure!(store.authenticate_ingest_key(&secret, at).await?.is_ok());
            ensure!(
                last_used().await? == Some(t1),
                "{at}: the first use in the minute"
            );
        }
        let t2 = t1 + INGEST_KEY_TOUCH_INTERVAL;
        ensure!(store.authenticate_ingest_key(&secret, t2).await?.is_ok());
        ensure!(
            last_used().await? == Some(t2),
            "a minute later it is written again"
        );
        // Concurrent uses a minute later: one write wins, every request is admitted.
        let t3 = t2 + INGEST_KEY_TOUCH_INTERVAL;
        let uses = futures::future::join_all(
            (0..8).map(|i| store.authenticate_ingest_key(&secret, t3 + i)),
        )
        .await;
        for u in uses {
            ensure!(u?.is_ok());
        }
        let last = last_used().await?.context("recorded")?;
        ensure!((t3..t3 + 8).contains(&last), "{last}");
        // A wrong key or a revoked one records nothing.
        ensure!(store
            .authenticate_ingest_key(
                &new_secret(INGEST_KEY_PREFIX),
                t3 + 5 * INGEST_KEY_TOUCH_INTERVAL
            )
            .await?
            .is_err());
        ensure!(last_used().await? == Some(last));
        Ok(())
    }
}
