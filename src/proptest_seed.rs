//! Property tests with a seed a person can replay. Each property test's config comes from
//! [`config`], which fixes the run's RNG seed (from `PROPTEST_RNG_SEED`, else a fresh random
//! one) and prints it; the harness shows a test's output only when it fails, so a failure
//! reads `proptest seed 1234: rerun with PROPTEST_RNG_SEED=1234` above its minimal input.

use proptest::test_runner::{Config, RngSeed};

/// A proptest config of `cases` cases with a fixed, printed seed.
pub fn config(cases: u32) -> Config {
    let base = Config::default(); // reads PROPTEST_RNG_SEED
    let seed = match base.rng_seed {
        RngSeed::Fixed(s) => s,
        RngSeed::Random => rand::random(),
    };
    eprintln!("proptest seed {seed}: rerun with PROPTEST_RNG_SEED={seed}");
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        ..base
    }
}
