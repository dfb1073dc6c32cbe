//! The one error type of the core crate. The binding crate maps each variant to a Python
//! exception class in one place (`ftscale-py/src/errors.rs`).

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A caller-supplied argument is out of range or inconsistent; the message says which.
    #[error("{0}")]
    InvalidArgument(String),
    /// A file the engine wrote or reads back (a spill of the work directory) cannot be read or
    /// is not what was written; the message names the file.
    #[error("{0}")]
    Io(String),
}

pub type Result<T> = std::result::Result<T, CoreError>;

pub(crate) fn io_error(msg: impl Into<String>) -> CoreError {
    CoreError::Io(msg.into())
}

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(CoreError::InvalidArgument(msg.into()))
}
