//! What the integration tests of every crate share: the real test bed's
//! environment ([`Bed`], as `scripts/testbed.sh env` exports it), the rule
//! that decides whether a test whose requirements are unmet skips or fails
//! ([`Policy`], [`require!`]), and a client of rscale's admin API
//! ([`Admin`]).
//!
//! The rule: a test whose environment lacks something (the test bed, root,
//! a tool) skips, saying what is missing and how to get it, only when
//! neither `CI=true` nor `TAILNET_TEST_REQUIRE=1` is set. Under either it
//! fails with the same message, so a run that is meant to exercise
//! everything cannot pass by skipping.

#![forbid(unsafe_code)]

mod admin;
mod bed;
mod needs;
mod policy;

pub use admin::{Admin, AdminError, KeySpec};
pub use bed::Bed;
pub use needs::{Missing, Needs, Unmet};
pub use policy::{decide, settle, Policy, Verdict};

/// The value of `$found` (a `Result<T, impl Into<Unmet>>`) when it is
/// there; otherwise skips the calling test (returns from it) or fails it,
/// as [`Policy::from_env`] decides.
#[macro_export]
macro_rules! require {
    ($found:expr) => {
        match $crate::settle($found) {
            ::core::option::Option::Some(found) => found,
            ::core::option::Option::None => return,
        }
    };
}
