//! Skip or fail: what happens to a test whose requirements are unmet.

use crate::needs::Unmet;

/// Variables that make unmet requirements failures: the name, the values
/// that do it, and how a message names the setting.
const REQUIRING: [(&str, &[&str], &str); 2] = [
    ("CI", &["true", "1"], "CI=true"),
    (
        "TAILNET_TEST_REQUIRE",
        &["1", "true"],
        "TAILNET_TEST_REQUIRE=1",
    ),
];

/// How a run treats a test whose requirements are unmet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// A developer's run: the test skips, saying why.
    Skip,
    /// CI or `scripts/test-in-netns.sh`: the test fails; `because` names
    /// the setting that asked for it.
    Fail { because: &'static str },
}

impl Policy {
    /// The policy of this process's environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The policy of the environment `lookup` reads.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        REQUIRING
            .iter()
            .find(|(name, values, _)| {
                lookup(name).is_some_and(|v| values.iter().any(|want| v.eq_ignore_ascii_case(want)))
            })
            .map_or(Self::Skip, |(_, _, setting)| Self::Fail {
                because: setting,
            })
    }
}

/// What becomes of one test.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<T> {
    /// Everything is there: the test runs with it.
    Run(T),
    /// Something is missing and the policy allows skipping.
    Skip(Unmet),
    /// Something is missing and the policy requires everything.
    Fail { unmet: Unmet, because: &'static str },
}

/// The verdict for a test whose requirement check gave `found`.
pub fn decide<T>(policy: Policy, found: Result<T, Unmet>) -> Verdict<T> {
    match (found, policy) {
        (Ok(found), _) => Verdict::Run(found),
        (Err(unmet), Policy::Skip) => Verdict::Skip(unmet),
        (Err(unmet), Policy::Fail { because }) => Verdict::Fail { unmet, because },
    }
}

/// Applies this process's policy to `found`: `Some` to run; `None` (after
/// saying why) to skip; a panic naming what is missing to fail.
#[track_caller]
pub fn settle<T, E: Into<Unmet>>(found: Result<T, E>) -> Option<T> {
    match decide(Policy::from_env(), found.map_err(Into::into)) {
        Verdict::Run(found) => Some(found),
        Verdict::Skip(unmet) => {
            eprintln!("skipped: {unmet} (under CI=true or TAILNET_TEST_REQUIRE=1 this fails)");
            None
        }
        Verdict::Fail { unmet, because } => {
            panic!("{unmet} (not skipped: {because} requires every test to run)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::needs::Missing;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_string())
        }
    }

    fn unmet() -> Unmet {
        Missing::new("TAILNET_TEST_CONTROL_URL is not set", "source the bed").into()
    }

    #[test]
    fn without_ci_or_require_a_missing_bed_skips() {
        for vars in [
            &[][..],
            &[("CI", "false")],
            &[("TAILNET_TEST_REQUIRE", "0")],
            &[("CI", "")],
        ] {
            let policy = Policy::from_lookup(env(vars));
            assert_eq!(policy, Policy::Skip, "{vars:?}");
            assert_eq!(
                decide::<()>(policy, Err(unmet())),
                Verdict::Skip(unmet()),
                "{vars:?}"
            );
        }
    }

    #[test]
    fn ci_or_require_turns_a_missing_bed_into_a_failure() {
        for (vars, because) in [
            (&[("CI", "true")][..], "CI=true"),
            (&[("CI", "TRUE")], "CI=true"),
            (&[("CI", "1")], "CI=true"),
            (&[("TAILNET_TEST_REQUIRE", "1")], "TAILNET_TEST_REQUIRE=1"),
            (
                &[("CI", "false"), ("TAILNET_TEST_REQUIRE", "1")],
                "TAILNET_TEST_REQUIRE=1",
            ),
        ] {
            let policy = Policy::from_lookup(env(vars));
            assert_eq!(policy, Policy::Fail { because }, "{vars:?}");
            assert_eq!(
                decide::<()>(policy, Err(unmet())),
                Verdict::Fail {
                    unmet: unmet(),
                    because
                },
                "{vars:?}"
            );
        }
    }

    #[test]
    fn a_complete_environment_runs_under_every_policy() {
        for vars in [&[][..], &[("CI", "true")], &[("TAILNET_TEST_REQUIRE", "1")]] {
            let policy = Policy::from_lookup(env(vars));
            assert_eq!(decide(policy, Ok(7)), Verdict::Run(7), "{vars:?}");
        }
    }

    #[test]
    fn settle_runs_with_what_was_found() {
        assert_eq!(settle::<_, Unmet>(Ok("bed")), Some("bed"));
    }
}
