//! Feature flags for every service, through OpenFeature.
//!
//! Code asks a [`Flags`] for a typed value with an evaluation context
//! ([`user`] builds the one of an end user's call: the user id is the
//! targeting key, so a percentage rollout is sticky per user). Behind it is
//! the OpenFeature Rust SDK's client with one provider: flagd flag
//! definitions (`state`, `variants`, `defaultVariant`, `targeting` in
//! JSONLogic with `fractional`, `sem_ver`, `starts_with`, `ends_with` and
//! shared `$evaluators`) read from the files `[server.flags]` names and
//! evaluated in process by flagd's evaluation engine, with no flag server.
//!
//! - [`definitions`]: reading and checking one file (a mistake is refused
//!   with the flag and the reason named);
//! - `store`: the definitions in force, reloaded when a file changes; a
//!   refused change leaves the previous ones in force;
//! - `provider`: the OpenFeature provider;
//! - `hook`: counts and logs every evaluation;
//! - `admin`: `shop.flags.v1.FlagsAdminService` (what is loaded, and
//!   EvaluateFlag to explain an answer), served by every service.
//!
//! A flag that is missing or disabled gives the code's default, never an
//! error to the caller.

mod admin;
pub mod definitions;
mod hook;
mod provider;
mod settings;
mod store;

pub use definitions::DefinitionError;
pub use open_feature::EvaluationContext;
pub use provider::Resolution;
pub use settings::FlagSettings;

use open_feature::{EvaluationReason, OpenFeature};
use shop_proto::shop::flags::v1::flags_admin_service_server::FlagsAdminServiceServer;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A service's flags: cheap to clone, one per process.
#[derive(Clone)]
pub struct Flags {
    client: Arc<open_feature::Client>,
    provider: Arc<provider::FileProvider>,
    store: Arc<store::Store>,
    stats: Arc<hook::Stats>,
    settings: FlagSettings,
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flags")
            .field("files", &self.settings.files)
            .finish_non_exhaustive()
    }
}

/// The evaluation context of an end user's call: the user id as the
/// targeting key.
pub fn user(user_id: impl Into<String>) -> EvaluationContext {
    EvaluationContext::default().with_targeting_key(user_id)
}

impl Flags {
    /// Reads and checks every configured file and sets up the OpenFeature
    /// client. A file that is unreadable or refused (the error names the
    /// file, and the flag when one is wrong) is logged and shown by
    /// FlagsAdmin, and its flags give the code's defaults until it is fixed;
    /// only settings that cannot work are an error.
    pub async fn load(settings: &FlagSettings) -> Result<Self, DefinitionError> {
        if settings.watch_interval.is_zero() {
            return Err(DefinitionError::Settings {
                key: "server.flags.watch_interval".into(),
                message: "must be more than 0s".into(),
            });
        }
        let store = Arc::new(store::Store::load(&settings.files));
        // What EvaluateFlag asks: the same definitions, the same engine, no
        // hooks (an operator's question is not the code's evaluation).
        let provider = Arc::new(provider::FileProvider::new(store.clone()));
        let stats = Arc::new(hook::Stats::default());
        // An API instance of our own rather than the global singleton, so
        // services sharing a test process do not share flags.
        let mut api = OpenFeature::default();
        api.set_provider(provider::FileProvider::new(store.clone()))
            .await;
        api.add_hook(hook::Counting(stats.clone())).await;
        let client = Arc::new(api.create_client());
        let snapshot = store.snapshot();
        if !settings.files.is_empty() {
            tracing::info!(files = ?settings.files, flags = ?snapshot.flags.keys().collect::<Vec<_>>(), "flag definitions loaded");
        }
        Ok(Self {
            client,
            provider,
            store,
            stats,
            settings: settings.clone(),
        })
    }

    /// No files: every flag is the code's default.
    pub async fn none() -> Self {
        Self::load(&FlagSettings::default())
            .await
            .expect("no files, nothing to refuse")
    }

    /// A boolean flag; `default` when it is missing, disabled or fails.
    pub async fn bool(&self, key: &str, default: bool, context: &EvaluationContext) -> bool {
        match self.client.get_bool_details(key, Some(context), None).await {
            Ok(d) if d.reason != Some(EvaluationReason::Disabled) => d.value,
            _ => default,
        }
    }

    /// An integer flag; `default` when it is missing, disabled or fails.
    pub async fn int(&self, key: &str, default: i64, context: &EvaluationContext) -> i64 {
        match self.client.get_int_details(key, Some(context), None).await {
            Ok(d) if d.reason != Some(EvaluationReason::Disabled) => d.value,
            _ => default,
        }
    }

    /// A string flag; `default` when it is missing, disabled or fails.
    pub async fn string(&self, key: &str, default: &str, context: &EvaluationContext) -> String {
        match self
            .client
            .get_string_details(key, Some(context), None)
            .await
        {
            Ok(d) if d.reason != Some(EvaluationReason::Disabled) => d.value,
            _ => default.to_string(),
        }
    }

    /// How `key` resolves for `context`, uncounted: what FlagsAdmin's
    /// EvaluateFlag answers. Typed as the code asked for it at its newest
    /// evaluation (a variant of another type is the TYPE_MISMATCH the code
    /// got); untyped until the code has asked.
    pub fn explain(&self, key: &str, context: &EvaluationContext) -> Resolution {
        let resolution = self.provider.resolve(key, context);
        match self.stats.of(key).asked_as {
            Some(kind) => resolution.typed_as(key, &kind),
            None => resolution,
        }
    }

    /// Reads the files again now; how many changed files were applied.
    pub fn reload(&self) -> usize {
        self.store.reload()
    }

    /// Reloads every `watch_interval` until `shutdown`.
    pub async fn watch(self, shutdown: CancellationToken) {
        if self.settings.files.is_empty() {
            return;
        }
        self.store
            .clone()
            .watch(self.settings.watch_interval, shutdown)
            .await;
    }

    /// `shop.flags.v1.FlagsAdminService` over these flags.
    pub fn admin(&self) -> FlagsAdminServiceServer<admin::FlagsAdmin> {
        FlagsAdminServiceServer::new(admin::FlagsAdmin {
            flags: self.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const FILE: &str = r#"{
      "$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@shop.example"]}},
      "flags": {
        "kill": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "minimum": {"state": "ENABLED", "variants": {"none": 0, "ten": 1000}, "defaultVariant": "none",
                    "targeting": {"if": [{"$ref": "staff"}, "ten", {"fractional": [["ten", 20], ["none", 80]]}]}},
        "off": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "beta": {"state": "ENABLED", "variants": {"yes": true, "no": false}, "defaultVariant": "no",
                 "targeting": {"if": [{"sem_ver": [{"var": "app"}, ">=", "2.1.0"]}, "yes", null]}}
      }
    }"#;

    fn write(path: &Path, text: &str) {
        // As a ConfigMap update does: a new file renamed over the old one.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// A file of one enabled flag `key` whose only variant `a` is `value`.
    fn one_flag(key: &str, value: serde_json::Value) -> String {
        serde_json::json!({"flags": {key: {
            "state": "ENABLED", "variants": {"a": value}, "defaultVariant": "a"
        }}})
        .to_string()
    }

    async fn flags(dir: &Path, text: &str) -> Flags {
        let path = dir.join("flags.json");
        write(&path, text);
        Flags::load(&FlagSettings {
            files: vec![path],
            ..FlagSettings::default()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn typed_values_come_from_variants_and_targeting() {
        let dir = tempfile::tempdir().unwrap();
        let f = flags(dir.path(), FILE).await;
        assert!(f.bool("kill", false, &user("u")).await);
        assert_eq!(
            f.explain("kill", &user("u")).reason,
            EvaluationReason::Static
        );
        let staff = user("u").with_custom_field("email", "ada@shop.example");
        assert_eq!(f.int("minimum", -1, &staff).await, 1000);
        let beta = EvaluationContext::default().with_custom_field("app", "2.3.0");
        assert!(f.bool("beta", false, &beta).await);
        let r = f.explain(
            "beta",
            &EvaluationContext::default().with_custom_field("app", "1.0.0"),
        );
        assert_eq!(
            (r.variant.as_deref(), r.reason),
            (Some("no"), EvaluationReason::Default)
        );
        // Sticky: a user gets the same answer every time.
        for id in ["a", "b", "c", "d"] {
            let first = f.int("minimum", -1, &user(id)).await;
            for _ in 0..5 {
                assert_eq!(f.int("minimum", -1, &user(id)).await, first);
            }
        }
    }

    #[tokio::test]
    async fn missing_disabled_and_mistyped_flags_give_the_code_default() {
        let dir = tempfile::tempdir().unwrap();
        let f = flags(dir.path(), FILE).await;
        assert!(f.bool("nobody-defined-this", true, &user("u")).await);
        let r = f.explain("nobody-defined-this", &user("u"));
        assert_eq!(r.reason, EvaluationReason::Error);
        assert_eq!(
            r.error.unwrap().code,
            open_feature::EvaluationErrorCode::FlagNotFound
        );
        // Disabled: the code's default, whatever the definition's default.
        assert!(!f.bool("off", false, &user("u")).await);
        assert_eq!(
            f.explain("off", &user("u")).reason,
            EvaluationReason::Disabled
        );
        // A number asked for as a boolean: the code's default, and
        // explained as the code got it.
        assert_eq!(
            f.explain("minimum", &user("u")).value,
            Some(serde_json::json!(0)),
            "untyped before the code asks"
        );
        assert!(f.bool("minimum", true, &user("u")).await);
        let counts = f.stats.of("minimum");
        assert_eq!(counts.errors, 1);
        assert_eq!(counts.asked_as, Some(open_feature::Type::Bool));
        let r = f.explain("minimum", &user("u"));
        assert_eq!((r.reason, r.value), (EvaluationReason::Error, None));
        let e = r.error.unwrap();
        assert_eq!(e.code, open_feature::EvaluationErrorCode::TypeMismatch);
        assert!(
            e.message
                .as_deref()
                .unwrap()
                .contains("(variant \"none\"), and the code asks for it as bool"),
            "{e:?}"
        );
        assert_eq!(
            f.explain("kill", &user("u")).value,
            Some(serde_json::json!(true))
        );
        assert_eq!(f.stats.of("off").by_variant.get(""), Some(&1));
        assert_eq!(f.stats.of("kill").by_variant.values().sum::<u64>(), 0);
    }

    #[tokio::test]
    async fn a_changed_file_applies_and_a_bad_one_is_refused_keeping_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let f = flags(dir.path(), FILE).await;
        let path = dir.path().join("flags.json");
        assert_eq!(f.reload(), 0, "nothing changed");

        write(
            &path,
            &FILE.replace(
                r#""defaultVariant": "on"},"#,
                r#""defaultVariant": "off"},"#,
            ),
        );
        assert_eq!(f.reload(), 1);
        assert!(!f.bool("kill", true, &user("u")).await);

        for bad in [
            "{\"flags\": ".to_string(),
            FILE.replace("\"starts_with\"", "\"x\"")
                .replace("ends_with", "ends_width"),
            FILE.replace(
                r#""defaultVariant": "none","#,
                r#""defaultVariant": "zero","#,
            ),
        ] {
            write(&path, &bad);
            assert_eq!(f.reload(), 0);
            assert!(
                !f.bool("kill", true, &user("u")).await,
                "the previous definitions stay"
            );
            let snapshot = f.store.snapshot();
            let refused = snapshot.sources[0]
                .refused
                .as_ref()
                .expect("refusal recorded");
            assert!(refused.error.contains("flags.json"), "{}", refused.error);
            assert_eq!(f.reload(), 0, "reported once");
        }
        let snapshot = f.store.snapshot();
        let error = &snapshot.sources[0].refused.as_ref().unwrap().error;
        assert!(
            error.contains("flag \"minimum\"") && error.contains("\"zero\""),
            "{error}"
        );

        // A good file again: applied, and the refusal is gone.
        write(&path, FILE);
        assert_eq!(f.reload(), 1);
        assert!(f.bool("kill", false, &user("u")).await);
        assert!(f.store.snapshot().sources[0].refused.is_none());
    }

    #[tokio::test]
    async fn a_bad_file_at_start_gives_code_defaults_and_two_files_may_not_share_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        write(
            &bad,
            r#"{"flags": {"k": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "b"}}}"#,
        );
        let f = Flags::load(&FlagSettings {
            files: vec![bad.clone()],
            ..FlagSettings::default()
        })
        .await
        .unwrap();
        assert_eq!(f.int("k", 7, &user("u")).await, 7);
        let snapshot = f.store.snapshot();
        let refused = snapshot.sources[0].refused.as_ref().expect("reported");
        assert!(refused.error.contains("flag \"k\""), "{}", refused.error);
        assert!(snapshot.sources[0].loaded_at.is_none());
        // Fixed: applied.
        write(&bad, &one_flag("k", serde_json::json!(1)));
        assert_eq!(f.reload(), 1);
        assert_eq!(f.int("k", 7, &user("u")).await, 1);

        // A key in two files: the file that brought it is refused (and
        // blamed), the other keeps its flags, and a third file's change
        // still applies.
        let (one, two, three) = (
            dir.path().join("one.json"),
            dir.path().join("two.json"),
            dir.path().join("three.json"),
        );
        write(&one, FILE);
        write(&two, &one_flag("other", serde_json::json!(true)));
        write(&three, &one_flag("third", serde_json::json!(1)));
        let f = Flags::load(&FlagSettings {
            files: vec![one, two.clone(), three.clone()],
            ..FlagSettings::default()
        })
        .await
        .unwrap();
        write(&two, &one_flag("kill", serde_json::json!(false)));
        write(&three, &one_flag("third", serde_json::json!(3)));
        assert_eq!(f.reload(), 1, "three applied, two refused");
        assert!(f.bool("kill", false, &user("u")).await, "one's kill stays");
        assert!(
            f.bool("other", false, &user("u")).await,
            "two's previous flags stay"
        );
        assert_eq!(f.int("third", 0, &user("u")).await, 3);
        let snapshot = f.store.snapshot();
        let error = &snapshot.sources[1]
            .refused
            .as_ref()
            .expect("two is blamed")
            .error;
        assert!(
            error.contains("flag \"kill\" is defined in") && error.contains("two.json"),
            "{error}"
        );
        assert!(snapshot.sources[0].refused.is_none() && snapshot.sources[2].refused.is_none());
        assert_eq!(f.reload(), 0, "reported once");
        assert!(f.store.snapshot().sources[1].refused.is_some());
    }

    #[tokio::test]
    async fn an_unreadable_file_is_reported_once_and_a_zero_interval_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = flags(dir.path(), FILE).await;
        std::fs::remove_file(dir.path().join("flags.json")).unwrap();
        f.reload();
        let at = f.store.snapshot().sources[0].refused.as_ref().unwrap().at;
        assert!(
            f.bool("kill", false, &user("u")).await,
            "the previous definitions stay"
        );
        f.reload();
        assert_eq!(
            f.store.snapshot().sources[0].refused.as_ref().unwrap().at,
            at,
            "not reported again"
        );
        let e = Flags::load(&FlagSettings {
            watch_interval: std::time::Duration::ZERO,
            ..FlagSettings::default()
        })
        .await
        .unwrap_err();
        assert!(e.to_string().contains("server.flags.watch_interval"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_applies_a_change_within_its_interval() {
        let dir = tempfile::tempdir().unwrap();
        let f = flags(dir.path(), FILE).await;
        let shutdown = CancellationToken::new();
        let watch = tokio::spawn(f.clone().watch(shutdown.clone()));
        write(
            &dir.path().join("flags.json"),
            &FILE.replace(
                r#""defaultVariant": "on"},"#,
                r#""defaultVariant": "off"},"#,
            ),
        );
        let mut applied = false;
        for _ in 0..30 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if !f.bool("kill", true, &user("u")).await {
                applied = true;
                break;
            }
        }
        assert!(applied, "applied within the 1 s interval (and then some)");
        shutdown.cancel();
        watch.await.unwrap();
    }
}
