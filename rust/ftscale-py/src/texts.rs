//! Borrowing texts from Python without copying them.
//!
//! Accepted: a list whose items are all `str` (borrowed through CPython's cached UTF-8), or a
//! list of Arrow string arrays (anything with `__arrow_c_array__`: pyarrow arrays / chunks,
//! formats `u` and `U`). Arrow buffers are read in place through the C Data Interface; the
//! capsules are held for the whole call so the memory outlives every borrowed `&str`.

use std::ffi::{c_char, c_void, CStr};

use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyCapsuleMethods, PyList, PyString, PyTuple};

use crate::errors::config_error;

#[repr(C)]
struct ArrowSchema {
    format: *const c_char,
    name: *const c_char,
    metadata: *const c_char,
    flags: i64,
    n_children: i64,
    children: *mut *mut ArrowSchema,
    dictionary: *mut ArrowSchema,
    release: Option<unsafe extern "C" fn(*mut ArrowSchema)>,
    private_data: *mut c_void,
}

#[repr(C)]
struct ArrowArray {
    length: i64,
    null_count: i64,
    offset: i64,
    n_buffers: i64,
    n_children: i64,
    buffers: *mut *const c_void,
    children: *mut *mut ArrowArray,
    dictionary: *mut ArrowArray,
    release: Option<unsafe extern "C" fn(*mut ArrowArray)>,
    private_data: *mut c_void,
}

/// Owns the Python objects the borrowed texts point into.
pub struct Texts<'py> {
    strings: Vec<Bound<'py, PyString>>,
    arrays: Vec<(Bound<'py, PyCapsule>, Bound<'py, PyCapsule>)>,
}

impl<'py> Texts<'py> {
    pub fn extract(list: &Bound<'py, PyList>) -> PyResult<Self> {
        let mut strings = Vec::new();
        let mut arrays = Vec::new();
        for item in list.iter() {
            if let Ok(s) = item.cast::<PyString>() {
                strings.push(s.clone());
            } else if item.hasattr("__arrow_c_array__")? {
                let pair = item.call_method0("__arrow_c_array__")?;
                let pair = pair.cast::<PyTuple>()?;
                let schema = pair.get_item(0)?.cast_into::<PyCapsule>()?;
                let array = pair.get_item(1)?.cast_into::<PyCapsule>()?;
                arrays.push((schema, array));
            } else {
                return Err(config_error(format!(
                    "texts must be str or Arrow string arrays, got {}",
                    item.get_type().name()?
                )));
            }
        }
        if !strings.is_empty() && !arrays.is_empty() {
            return Err(config_error("texts must be all str or all Arrow arrays, not a mix"));
        }
        Ok(Self { strings, arrays })
    }

    /// The borrowed texts, in order.
    pub fn as_strs(&self) -> PyResult<Vec<&str>> {
        let mut out: Vec<&str> = Vec::with_capacity(self.strings.len());
        for s in &self.strings {
            out.push(s.to_str()?);
        }
        for (schema, array) in &self.arrays {
            append_arrow_strings(schema, array, &mut out)?;
        }
        Ok(out)
    }
}

fn append_arrow_strings<'a>(schema: &'a Bound<PyCapsule>, array: &'a Bound<PyCapsule>, out: &mut Vec<&'a str>) -> PyResult<()> {
    let schema_ptr = schema.pointer_checked(Some(c"arrow_schema"))?.cast::<ArrowSchema>();
    let array_ptr = array.pointer_checked(Some(c"arrow_array"))?.cast::<ArrowArray>();
    // SAFETY: the capsules follow the Arrow PyCapsule protocol, so they point at valid,
    // unreleased ArrowSchema/ArrowArray structs that live as long as the capsules.
    let (schema, array) = unsafe { (schema_ptr.as_ref(), array_ptr.as_ref()) };
    let format = unsafe { CStr::from_ptr(schema.format) }.to_bytes();
    let large = match format {
        b"u" => false,
        b"U" => true,
        other => {
            return Err(config_error(format!(
                "Arrow texts must be string or large_string, got format {:?}; cast the column first",
                String::from_utf8_lossy(other)
            )))
        }
    };
    if array.n_buffers != 3 {
        return Err(config_error("malformed Arrow string array: expected 3 buffers"));
    }
    let (len, offset) = (array.length as usize, array.offset as usize);
    // SAFETY: a string array has buffers [validity, offsets, values]; offsets has
    // offset+len+1 entries and values spans the last offset.
    let buffers = unsafe { std::slice::from_raw_parts(array.buffers, 3) };
    let valid = |i: usize| -> bool {
        if array.null_count == 0 || buffers[0].is_null() {
            return true;
        }
        let bits = buffers[0] as *const u8;
        let bit = offset + i;
        unsafe { (*bits.add(bit / 8) >> (bit % 8)) & 1 == 1 }
    };
    let offsets: Vec<usize> = if large {
        let o = unsafe { std::slice::from_raw_parts(buffers[1] as *const i64, offset + len + 1) };
        o[offset..].iter().map(|&v| v as usize).collect()
    } else {
        let o = unsafe { std::slice::from_raw_parts(buffers[1] as *const i32, offset + len + 1) };
        o[offset..].iter().map(|&v| v as usize).collect()
    };
    let (lo, hi) = (offsets[0], offsets[len]);
    let values: &'a [u8] = if hi == 0 {
        &[]
    } else {
        unsafe { std::slice::from_raw_parts(buffers[2] as *const u8, hi) }
    };
    // Validate the UTF-8 once for the whole span, then check each cut is a char boundary.
    let span = simdutf8::compat::from_utf8(&values[lo..hi])
        .map_err(|e| config_error(format!("Arrow texts are not valid UTF-8: {e}")))?;
    for i in 0..len {
        let (a, b) = (offsets[i] - lo, offsets[i + 1] - lo);
        if !valid(i) {
            out.push("");
            continue;
        }
        match span.get(a..b) {
            Some(s) => out.push(s),
            None => return Err(config_error("malformed Arrow string array: offsets split a character")),
        }
    }
    Ok(())
}
