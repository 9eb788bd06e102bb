//! The error of a daemon operation, as the control socket and the CLI report it: bad input
//! (exit 2, nothing changed) or a failure of the kernel or the filesystem (exit 1), each
//! keeping the structured error underneath (map, operation and errno; file and cause).

use crate::{dataplane::DataplaneError, policy::PolicyError, sources::SourcesError, state::StateError};

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// An argument or request the operator can fix: nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// A policy file that does not parse or validate: nothing changed.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The data plane refused.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// The source lists could not be changed (kernel tables or their files).
    #[error(transparent)]
    Sources(#[from] SourcesError),
    /// A state file could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
}

impl OpError {
    /// The CLI's exit code: 2 for input the operator can fix, 1 for everything else.
    pub const fn exit_code(&self) -> i32 {
        match self {
            Self::Invalid(_) | Self::Policy(_) => 2,
            Self::Dataplane(_) | Self::Sources(_) | Self::State(_) => 1,
        }
    }

    /// True for input errors (exit 2).
    pub const fn is_invalid_input(&self) -> bool {
        self.exit_code() == 2
    }
}
