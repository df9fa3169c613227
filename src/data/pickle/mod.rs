//! The smallest pickle reader that reads every validation `.bin` style in the wild, in memory
//! bounded by the input.
//!
//! Why not serde-pickle (which reads all three styles): it clones a value at every DUP/GET, so
//! a 567-byte hostile pickle that duplicates a growing list expands past 2 GB and aborts the
//! process (found by `tests/fuzz` target `pickle`). Here memo references share their value
//! (`Rc`), every opcode creates at most one value, and [`PairSet`](super::bin::PairSet) refuses
//! a pickle whose images add up to more bytes than the file holds.
//!
//! Supported: protocols 0–5 opcodes for None/bool/int/float, str/bytes/unicode, list, tuple,
//! dict, set, memo, GLOBAL/STACK_GLOBAL, REDUCE, BUILD, NEWOBJ. `_codecs.encode(s, "latin1")`
//! (Python 3 bytes under protocol 2) is evaluated; any other call becomes an opaque object
//! that keeps its arguments and BUILD state (how numpy arrays arrive).

mod machine;

use std::cell::RefCell;
use std::rc::Rc;

use machine::Machine;

#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(Rc<Vec<u8>>),
    Str(Rc<String>),
    List(Rc<RefCell<Vec<Value>>>),
    Tuple(Rc<Vec<Value>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Rc<(String, String)>),
    /// The result of calling a global: its arguments and any BUILD state.
    Object(Rc<Object>),
}

#[derive(Debug)]
pub struct Object {
    pub callable: Value,
    pub args: Value,
    pub state: RefCell<Option<Value>>,
}

/// Where and why a pickle could not be read. The caller adds the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("byte {pos}: {message}")]
pub struct PickleError {
    pub pos: usize,
    pub message: String,
}

impl PickleError {
    fn at(pos: usize, message: impl Into<String>) -> PickleError {
        PickleError {
            pos,
            message: message.into(),
        }
    }
}

/// A loaded pickle: the object it stores, and every container it made.
pub struct Document {
    pub root: Value,
    containers: Vec<Value>,
}

/// A pickle can make a list that contains itself (DUP, APPEND); emptying every container
/// breaks such cycles, which reference counting alone would leak.
impl Drop for Document {
    fn drop(&mut self) {
        let mut work = Vec::new();
        for c in self.containers.drain(..) {
            match &c {
                Value::List(l) => work.append(&mut l.borrow_mut()),
                Value::Dict(d) => work.extend(d.borrow_mut().drain(..).flat_map(|(k, v)| [k, v])),
                Value::Object(o) => work.extend(o.state.borrow_mut().take()),
                _ => {}
            }
            work.push(c);
        }
        drop(work);
    }
}

/// Runs a pickle and returns the object it stores.
pub fn load(data: &[u8]) -> Result<Document, PickleError> {
    let mut machine = Machine::new(data);
    let result = machine.run();
    let containers = std::mem::take(&mut machine.containers);
    drop(machine);
    let root = match result {
        Ok(root) => root,
        Err(e) => {
            // Break cycles of what was built before the error, too.
            drop(Document {
                root: Value::None,
                containers,
            });
            return Err(e);
        }
    };
    Ok(Document { root, containers })
}

impl Value {
    /// The bytes of a byte string, or of a numpy array (the BUILD state's data for
    /// `_reconstruct` pickles, the first argument for `_frombuffer` ones).
    pub fn array_bytes(&self) -> Option<Rc<Vec<u8>>> {
        match self {
            Value::Bytes(b) => Some(b.clone()),
            Value::Object(o) => {
                if let Some(Value::Tuple(t)) = &*o.state.borrow()
                    && t.len() == 5
                {
                    return match &t[4] {
                        Value::Bytes(b) => Some(b.clone()),
                        Value::Str(s) => s
                            .chars()
                            .map(|c| u8::try_from(c as u32).ok())
                            .collect::<Option<Vec<u8>>>()
                            .map(Rc::new),
                        _ => None,
                    };
                }
                match &o.args {
                    Value::Tuple(a) => a.first().and_then(|first| match first {
                        Value::Bytes(b) => Some(b.clone()),
                        _ => None,
                    }),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an integer".into(),
            Value::Float(_) => "a float".into(),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::Str(_) => "a text string".into(),
            Value::List(l) => format!("a list of {}", l.borrow().len()),
            Value::Tuple(t) => format!("a tuple of {}", t.len()),
            Value::Dict(_) => "a dict".into(),
            Value::Global(g) => format!("the global {}.{}", g.0, g.1),
            Value::Object(_) => "an object".into(),
        }
    }
}

/// Dropping is iterative: a hostile pickle can nest a million lists in a few megabytes, and
/// the default recursive drop would overflow the stack.
impl Drop for Value {
    fn drop(&mut self) {
        let mut work = Vec::new();
        take_children(self, &mut work);
        while let Some(mut v) = work.pop() {
            take_children(&mut v, &mut work);
        }
    }
}

/// Moves the children of `v` into `work` when `v` holds the last reference to them.
fn take_children(v: &mut Value, work: &mut Vec<Value>) {
    match v {
        Value::List(l) => {
            if let Some(cell) = Rc::get_mut(l) {
                work.append(cell.get_mut());
            }
        }
        Value::Tuple(t) => {
            if let Some(items) = Rc::get_mut(t) {
                work.append(items);
            }
        }
        Value::Dict(d) => {
            if let Some(cell) = Rc::get_mut(d) {
                for (k, v) in cell.get_mut().drain(..) {
                    work.push(k);
                    work.push(v);
                }
            }
        }
        Value::Object(o) => {
            if let Some(obj) = Rc::get_mut(o) {
                work.push(std::mem::replace(&mut obj.callable, Value::None));
                work.push(std::mem::replace(&mut obj.args, Value::None));
                if let Some(state) = obj.state.get_mut().take() {
                    work.push(state);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_drops_without_recursion() {
        // ']' × N then 'a' × N: lists nested N deep.
        let n = 1_000_000;
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b']', n));
        p.extend(std::iter::repeat_n(b'a', n - 1));
        p.push(b'.');
        let doc = load(&p).unwrap();
        assert!(matches!(doc.root, Value::List(_)));
    }

    #[test]
    fn dup_append_stays_small() {
        // The shape of the fuzzer's out-of-memory find: a list duplicated and appended
        // to itself over and over. Shared references keep it O(input).
        let mut p = vec![0x80, 2, b']'];
        for _ in 0..10_000 {
            p.extend([b'2', b'2', b'a']);
        }
        p.push(b'.');
        assert!(load(&p).is_ok());
    }
}
