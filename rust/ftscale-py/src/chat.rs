//! Binding of the chat encoder: Python conversations (lists of message dicts, as `to_pylist`
//! gives them) become template values with the GIL held; rendering, tokenizing and masking run
//! with the GIL released on the crate's pool; the samples come back as flat NumPy arrays.

use ftscale_core::chat::{field_name, parse_policy, ChatEncoder as CoreChatEncoder, ChatFailure, Conversation, Record, Value};
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::errors::to_pyerr;

/// A Python value (str, bool, int, float, None, list, tuple, dict) as a template value.
fn to_value(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::from(s.to_str()?));
    }
    if obj.is_none() {
        return Ok(Value::from(()));
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::from(b.is_true()));
    }
    if obj.cast::<PyInt>().is_ok() {
        return match obj.extract::<i64>() {
            Ok(n) => Ok(Value::from(n)),
            Err(_) => Ok(Value::from(obj.extract::<i128>()?)),
        };
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Value::from(f.value()));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        // String keys (every message, tool call and JSON object): a `Record`; others a map.
        let mut fields = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            let Ok(name) = k.cast::<PyString>() else { return map_value(d) };
            fields.push((field_name(name.to_str()?), to_value(&v)?));
        }
        return Ok(Record::value(fields));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return l.iter().map(|x| to_value(&x)).collect::<PyResult<Vec<_>>>().map(Value::from);
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return t.iter().map(|x| to_value(&x)).collect::<PyResult<Vec<_>>>().map(Value::from);
    }
    Err(PyTypeError::new_err(format!(
        "chat data holds a {} value; only str, bool, int, float, None, list and dict are supported",
        obj.get_type().name()?
    )))
}

/// A dict with keys other than strings, as a template map.
fn map_value(d: &Bound<'_, PyDict>) -> PyResult<Value> {
    let mut pairs = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        pairs.push((to_value(&k)?, to_value(&v)?));
    }
    Ok(Value::from_pairs(pairs))
}

fn conversation(messages: &Bound<'_, PyAny>, tools: &Bound<'_, PyAny>) -> PyResult<Conversation> {
    let list = messages.cast::<PyList>().map_err(|_| PyTypeError::new_err("messages must be a list of dicts"))?;
    let messages = list.iter().map(|m| to_value(&m)).collect::<PyResult<Vec<_>>>()?;
    Ok(Conversation { messages, tools: to_value(tools)? })
}

/// Renders and encodes conversations with a chat template and a `tokenizer.json`.
#[pyclass(module = "ftscale._core", frozen)]
pub struct ChatEncoder {
    inner: CoreChatEncoder,
}

#[pymethods]
impl ChatEncoder {
    /// `special_tokens`: (name, token) pairs the template sees (`bos_token`, ...); `policy`:
    /// `expand` or `locate` (turns whose rendering the template rewrites later). ConfigError
    /// when minijinja cannot compile the template or the tokenizer cannot be loaded.
    #[new]
    fn new(template: &str, special_tokens: Vec<(String, String)>, tokenizer_json: &str, policy: &str) -> PyResult<Self> {
        let policy = parse_policy(policy).map_err(to_pyerr)?;
        let inner = CoreChatEncoder::new(template, &special_tokens, tokenizer_json, policy).map_err(to_pyerr)?;
        Ok(Self { inner })
    }

    /// The rendering of `messages` (`apply_chat_template(tokenize=False)`); ValueError with the
    /// template's message when it does not render.
    #[pyo3(signature = (messages, tools=None, add_generation_prompt=false))]
    fn render(&self, py: Python<'_>, messages: &Bound<'_, PyAny>, tools: Option<&Bound<'_, PyAny>>, add_generation_prompt: bool) -> PyResult<String> {
        let none = py.None().into_bound(py);
        let conv = conversation(messages, tools.unwrap_or(&none))?;
        py.detach(|| self.inner.render(&conv, add_generation_prompt)).map_err(pyo3::exceptions::PyValueError::new_err)
    }

    /// Encode `(messages, tools)` pairs. Returns a dict: `ids` (a list of int32 arrays, one per
    /// sample), `masks` (uint8 arrays, the same lengths), `owners` (list of int: the conversation
    /// of each sample, ascending), `failures` (list of (index, kind, detail); kind
    /// `no_assistant_turn`, `render` or `template_mismatch`), `expanded_turns`, `located_turns`.
    /// The arrays are made here, not sliced from one in Python: that loop cost ~10% of encoding.
    #[pyo3(signature = (conversations, num_threads=None))]
    fn encode_batch<'py>(&self, py: Python<'py>, conversations: &Bound<'py, PyList>, num_threads: Option<usize>) -> PyResult<Bound<'py, PyDict>> {
        let mut convs = Vec::with_capacity(conversations.len());
        for item in conversations.iter() {
            let (messages, tools): (Bound<'py, PyAny>, Bound<'py, PyAny>) = item.extract()?;
            convs.push(conversation(&messages, &tools)?);
        }
        self.encode_conversations(py, convs, num_threads)
    }

    /// `encode_batch` for conversations of plain messages (a role and a text content each, no
    /// tools) given as Arrow-style columns, without a Python object per message: conversation
    /// `i` is messages `offsets[i]..offsets[i + 1]`; message `k`'s role is
    /// `role_data[role_offsets[k]..role_offsets[k + 1]]` (UTF-8), its content likewise; each
    /// message's fields in the struct's order (`role_first`). `system_prompt`: a system message
    /// put first in a conversation that has none (as `template_messages` does). ValueError when
    /// the offsets do not fit the data or a text is not UTF-8.
    #[pyo3(signature = (offsets, role_offsets, role_data, content_offsets, content_data, role_first, system_prompt=None, num_threads=None))]
    #[allow(clippy::too_many_arguments)]
    fn encode_columns<'py>(
        &self,
        py: Python<'py>,
        offsets: PyReadonlyArray1<'py, i64>,
        role_offsets: PyReadonlyArray1<'py, i64>,
        role_data: PyReadonlyArray1<'py, u8>,
        content_offsets: PyReadonlyArray1<'py, i64>,
        content_data: PyReadonlyArray1<'py, u8>,
        role_first: bool,
        system_prompt: Option<&str>,
        num_threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let offsets = offsets.as_slice()?;
        let roles = Texts { offsets: role_offsets.as_slice()?, data: role_data.as_slice()? };
        let contents = Texts { offsets: content_offsets.as_slice()?, data: content_data.as_slice()? };
        let convs = py.detach(|| plain_conversations(offsets, &roles, &contents, role_first, system_prompt)).map_err(PyValueError::new_err)?;
        self.encode_conversations(py, convs, num_threads)
    }

    /// Token ids (int32) and character offsets (list of (start, end)) of `text`, no special
    /// tokens added, as the encoder tokenizes samples.
    fn tokenize<'py>(&self, py: Python<'py>, text: &str) -> PyResult<(Bound<'py, PyArray1<i32>>, Vec<(usize, usize)>)> {
        let (ids, offsets) = py.detach(|| self.inner.tokenize_text(text)).map_err(to_pyerr)?;
        Ok((ids.into_iter().map(|t| t as i32).collect::<Vec<_>>().into_pyarray(py), offsets))
    }

    /// Whether the byte-level BPE fast path tokenizes (else the `tokenizers` crate).
    #[getter]
    fn fast_path(&self) -> bool {
        self.inner.fast_path()
    }

    /// Whether the template's string `+` chains are rendered by one call each.
    #[getter]
    fn fused_concatenations(&self) -> bool {
        self.inner.fused_concatenations()
    }

    /// Whether one render of a conversation gives every prefix's rendering (a loop over the
    /// messages that looks only backwards).
    #[getter]
    fn prefixes_from_one_render(&self) -> bool {
        self.inner.prefixes_from_one_render()
    }
}

impl ChatEncoder {
    /// Encode `convs` with the GIL released; the dict `encode_batch` returns.
    fn encode_conversations<'py>(&self, py: Python<'py>, convs: Vec<Conversation>, num_threads: Option<usize>) -> PyResult<Bound<'py, PyDict>> {
        // The conversations are freed with the GIL released too.
        let results = py.detach(move || {
            let results = self.inner.encode_batch(&convs, num_threads);
            drop(convs);
            results
        });
        let (ids, masks, owners) = (PyList::empty(py), PyList::empty(py), PyList::empty(py));
        let (mut expanded, mut located) = (0u64, 0u64);
        let failures = PyList::empty(py);
        for (index, result) in results.into_iter().enumerate() {
            match result {
                Ok(chat) => {
                    expanded += u64::from(chat.expanded_turns);
                    located += u64::from(chat.located_turns);
                    for sample in chat.samples {
                        let sample_ids: Vec<i32> = sample.ids.iter().map(|&t| t as i32).collect();
                        ids.append(sample_ids.into_pyarray(py))?;
                        masks.append(sample.mask.into_pyarray(py))?;
                        owners.append(index)?;
                    }
                }
                Err(failure) => {
                    let (kind, detail) = match failure {
                        ChatFailure::NoAssistantTurn => ("no_assistant_turn", "conversation has no assistant message; nothing to learn".to_string()),
                        ChatFailure::Render(m) => ("render", m),
                        ChatFailure::TemplateMismatch(m) => ("template_mismatch", m),
                    };
                    failures.append((index, kind, detail))?;
                }
            }
        }
        let out = PyDict::new(py);
        out.set_item("ids", ids)?;
        out.set_item("masks", masks)?;
        out.set_item("owners", owners)?;
        out.set_item("failures", failures)?;
        out.set_item("expanded_turns", expanded)?;
        out.set_item("located_turns", located)?;
        Ok(out)
    }
}

/// Strings stored as Arrow stores them: string `k` is `data[offsets[k]..offsets[k + 1]]`.
struct Texts<'a> {
    offsets: &'a [i64],
    data: &'a [u8],
}

impl Texts<'_> {
    fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    fn get(&self, k: usize, what: &str) -> Result<&str, String> {
        let range = |i: usize| self.offsets.get(i).and_then(|&o| usize::try_from(o).ok());
        let (start, end) = (range(k), range(k + 1));
        let bytes = start.zip(end).and_then(|(s, e)| self.data.get(s..e)).ok_or_else(|| format!("{what} {k}: offsets outside the data"))?;
        std::str::from_utf8(bytes).map_err(|_| format!("{what} {k} is not UTF-8"))
    }
}

/// The conversations of `encode_columns`. Held: each message's role and content, copied once.
fn plain_conversations(offsets: &[i64], roles: &Texts<'_>, contents: &Texts<'_>, role_first: bool, system_prompt: Option<&str>) -> Result<Vec<Conversation>, String> {
    let count = roles.len();
    if contents.len() != count || offsets.first().is_some_and(|&o| o != 0) || offsets.last().is_some_and(|&o| usize::try_from(o).ok() != Some(count)) {
        return Err("offsets must run from 0 to the number of roles and contents, as many of each".into());
    }
    let message = |role: &str, content: &str| {
        let (role, content) = ((field_name("role"), Value::from(role)), (field_name("content"), Value::from(content)));
        Record::value(if role_first { [role, content] } else { [content, role] })
    };
    let mut convs = Vec::with_capacity(offsets.len().saturating_sub(1));
    for pair in offsets.windows(2) {
        let (start, end) = (usize::try_from(pair[0]).unwrap_or(usize::MAX), usize::try_from(pair[1]).unwrap_or(0));
        if start > end || end > count {
            return Err("offsets must ascend".into());
        }
        let mut messages = Vec::with_capacity(end - start + 1);
        let mut has_system = false;
        for k in start..end {
            let role = roles.get(k, "role")?;
            has_system |= role == "system";
            messages.push(message(role, contents.get(k, "content")?));
        }
        if let (Some(prompt), false) = (system_prompt, has_system) {
            messages.insert(0, Record::value([(field_name("role"), Value::from("system")), (field_name("content"), Value::from(prompt))]));
        }
        convs.push(Conversation { messages, tools: Value::from(()) });
    }
    Ok(convs)
}
