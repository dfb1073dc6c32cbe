//! The one place where core errors become Python exceptions (classes of `ftscale.errors`).

use ftscale_core::CoreError;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyType;

fn ftscale_error_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    Ok(py.import("ftscale.errors")?.getattr(name)?.cast_into::<PyType>()?)
}

pub fn to_pyerr(err: CoreError) -> PyErr {
    let (class, msg) = match err {
        CoreError::InvalidArgument(m) => ("ConfigError", m),
        CoreError::Io(m) => ("DataError", m),
    };
    Python::attach(|py| match ftscale_error_class(py, class) {
        Ok(cls) => PyErr::from_type(cls, msg),
        Err(_) => PyValueError::new_err(msg),
    })
}

/// A caller-side mistake detected in the binding itself (wrong array length, bad texts).
pub fn config_error(msg: impl Into<String>) -> PyErr {
    to_pyerr(CoreError::InvalidArgument(msg.into()))
}
