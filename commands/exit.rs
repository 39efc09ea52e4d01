//! The exit codes of every subcommand, in one place so that they mean the same everywhere:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | it ran, and the answer is "no": a push not delivered, nobody to kick, a load test that missed (or any other error reported by `main`) |
//! | 2 | it could not be done: invalid config, a node unreachable or refusing the call, nothing connected |
//! | 130 | `serve` ended by a second signal |

use std::process::ExitCode;

/// Done.
pub fn done() -> ExitCode {
    ExitCode::SUCCESS
}

/// It ran, and the answer is "no".
pub fn no() -> ExitCode {
    ExitCode::from(1)
}

/// It could not be done.
pub fn failed() -> ExitCode {
    ExitCode::from(2)
}

/// Like [`done`] or [`no`].
pub fn yes_or_no(yes: bool) -> ExitCode {
    if yes { done() } else { no() }
}
