//! The one error type of the core crate. The binding crate maps each variant to a Python
//! exception class in one place (`ftscale-py/src/errors.rs`).

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A caller-supplied argument is out of range or inconsistent; the message says which.
    #[error("{0}")]
    InvalidArgument(String),
}

pub type Result<T> = std::result::Result<T, CoreError>;

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(CoreError::InvalidArgument(msg.into()))
}
