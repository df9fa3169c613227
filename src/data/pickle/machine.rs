//! The pickle virtual machine: one opcode at a time onto a stack of values, with the memo
//! (shared, never copied) and every mutable container kept for [`super::Document`].

use std::cell::RefCell;
use std::rc::Rc;

use super::{Object, PickleError, Value};

enum Item {
    Mark,
    Value(Value),
}

pub(super) struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    memo: std::collections::HashMap<u64, Value>,
    /// Every mutable container made, so [`super::Document`] can break reference cycles.
    pub containers: Vec<Value>,
}

fn err<T>(pos: usize, message: impl Into<String>) -> Result<T, PickleError> {
    Err(PickleError::at(pos, message))
}

impl<'a> Machine<'a> {
    pub fn new(data: &'a [u8]) -> Machine<'a> {
        Machine {
            data,
            pos: 0,
            stack: Vec::new(),
            memo: Default::default(),
            containers: Vec::new(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => err(
                self.pos,
                format!(
                    "truncated: {n} bytes announced, {} left",
                    self.data.len() - self.pos
                ),
            ),
        }
    }

    fn uint(&mut self, n: usize) -> Result<u64, PickleError> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return err(self.pos, "truncated text argument");
        };
        let text = std::str::from_utf8(&rest[..n])
            .map_err(|_| PickleError::at(self.pos, "text argument is not UTF-8"))?;
        self.pos += n + 1;
        Ok(text)
    }

    fn push(&mut self, v: Value) {
        if matches!(v, Value::List(_) | Value::Dict(_) | Value::Object(_))
            && !self.is_registered(&v)
        {
            self.containers.push(v.clone());
        }
        self.stack.push(Item::Value(v));
    }

    /// A value pushed again (DUP, GET) is registered already; new ones have one reference.
    fn is_registered(&self, v: &Value) -> bool {
        match v {
            Value::List(l) => Rc::strong_count(l) > 1,
            Value::Dict(d) => Rc::strong_count(d) > 1,
            Value::Object(o) => Rc::strong_count(o) > 1,
            _ => true,
        }
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        match self.stack.pop() {
            Some(Item::Value(v)) => Ok(v),
            Some(Item::Mark) => err(self.pos, "unexpected MARK on the stack"),
            None => err(self.pos, "stack underflow"),
        }
    }

    fn top(&self) -> Result<&Value, PickleError> {
        match self.stack.last() {
            Some(Item::Value(v)) => Ok(v),
            _ => err(self.pos, "no value on the stack"),
        }
    }

    /// Values above the topmost MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(mark) = self.stack.iter().rposition(|i| matches!(i, Item::Mark)) else {
            return err(self.pos, "no MARK on the stack");
        };
        let items = self.stack.split_off(mark + 1);
        self.stack.pop();
        Ok(items
            .into_iter()
            .map(|i| {
                if let Item::Value(v) = i {
                    v
                } else {
                    unreachable!()
                }
            })
            .collect())
    }

    fn bytes(&mut self, len_bytes: usize) -> Result<Value, PickleError> {
        let n = self.uint(len_bytes)? as usize;
        Ok(Value::Bytes(Rc::new(self.take(n)?.to_vec())))
    }

    fn unicode(&mut self, len_bytes: usize) -> Result<Value, PickleError> {
        let n = self.uint(len_bytes)? as usize;
        let at = self.pos;
        let s = std::str::from_utf8(self.take(n)?)
            .map_err(|_| PickleError::at(at, "unicode string is not UTF-8"))?;
        Ok(Value::Str(Rc::new(s.to_string())))
    }

    fn extend_list(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        match self.top()? {
            Value::List(l) => {
                l.borrow_mut().extend(items);
                Ok(())
            }
            _ => err(self.pos, "APPEND to something that is not a list"),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return err(self.pos, "SETITEMS with an odd number of values");
        }
        match self.top()? {
            Value::Dict(d) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.borrow_mut().push((k, v));
                }
                Ok(())
            }
            _ => err(self.pos, "SETITEM on something that is not a dict"),
        }
    }

    fn call(&mut self, callable: Value, args: Value) -> Result<Value, PickleError> {
        if let Value::Global(g) = &callable
            && g.0 == "_codecs"
            && g.1 == "encode"
            && let Value::Tuple(a) = &args
            && let [Value::Str(s), Value::Str(enc)] = &a[..]
            && enc.as_str() == "latin1"
        {
            let bytes: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
            return match bytes {
                Some(b) => Ok(Value::Bytes(Rc::new(b))),
                None => err(self.pos, "_codecs.encode: a character outside latin-1"),
            };
        }
        Ok(Value::Object(Rc::new(Object {
            callable,
            args,
            state: RefCell::new(None),
        })))
    }

    /// Runs to STOP and returns the value left on the stack. One arm per opcode: the dispatch
    /// reads best as one match, as pickletools lists the opcodes.
    pub fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            let at = self.pos;
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    self.take(1)?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Item::Mark),
                b'0' => {
                    self.stack
                        .pop()
                        .ok_or_else(|| PickleError::at(at, "POP on an empty stack"))?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'I' | b'L' => {
                    let text = self.line()?.trim_end_matches('L');
                    let v = match text {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        t => Value::Int(
                            t.parse()
                                .map_err(|_| PickleError::at(at, format!("bad integer {t:?}")))?,
                        ),
                    };
                    self.push(v);
                }
                b'J' => {
                    let v = self.uint(4)? as u32 as i32 as i64;
                    self.push(Value::Int(v));
                }
                b'K' => {
                    let v = self.uint(1)? as i64;
                    self.push(Value::Int(v));
                }
                b'M' => {
                    let v = self.uint(2)? as i64;
                    self.push(Value::Int(v));
                }
                0x8a | 0x8b => {
                    let n = self.uint(if op == 0x8a { 1 } else { 4 })? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return err(at, "integer wider than 64 bits");
                    }
                    let mut v = b.iter().rev().fold(0i64, |acc, &x| (acc << 8) | x as i64);
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Value::Int(v));
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.push(Value::Float(f64::from_be_bytes(b.try_into().unwrap())));
                }
                b'F' => {
                    let t = self.line()?;
                    let v = t
                        .parse()
                        .map_err(|_| PickleError::at(at, format!("bad float {t:?}")))?;
                    self.push(Value::Float(v));
                }
                b'T' | b'B' => {
                    let v = self.bytes(4)?;
                    self.push(v);
                }
                b'U' | b'C' => {
                    let v = self.bytes(1)?;
                    self.push(v);
                }
                0x8e | 0x96 => {
                    let v = self.bytes(8)?;
                    self.push(v);
                }
                b'X' => {
                    let v = self.unicode(4)?;
                    self.push(v);
                }
                0x8c => {
                    let v = self.unicode(1)?;
                    self.push(v);
                }
                0x8d => {
                    let v = self.unicode(8)?;
                    self.push(v);
                }
                b'V' => {
                    let t = self.line()?.to_string();
                    self.push(Value::Str(Rc::new(t)));
                }
                b']' => self.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_list(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b')' => self.push(Value::Tuple(Rc::new(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return err(at, "TUPLE with too few values");
                    }
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(Rc::new(items)));
                }
                b'}' | 0x8f => self.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Rc::new(RefCell::new(Vec::new()))));
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                0x90 => {
                    // ADDITEMS to a set: kept as dict keys.
                    let items = self.pop_mark()?;
                    let pairs = items.into_iter().flat_map(|k| [k, Value::None]).collect();
                    self.set_items(pairs)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)));
                }
                b'p' => {
                    let key = self
                        .line()?
                        .parse()
                        .map_err(|_| PickleError::at(at, "bad PUT index"))?;
                    let v = self.top()?.clone();
                    self.memo.insert(key, v);
                }
                b'q' | b'r' => {
                    let key = self.uint(if op == b'q' { 1 } else { 4 })?;
                    let v = self.top()?.clone();
                    self.memo.insert(key, v);
                }
                0x94 => {
                    let key = self.memo.len() as u64;
                    let v = self.top()?.clone();
                    self.memo.insert(key, v);
                }
                b'g' | b'h' | b'j' => {
                    let key = match op {
                        b'g' => self
                            .line()?
                            .parse()
                            .map_err(|_| PickleError::at(at, "bad GET index"))?,
                        b'h' => self.uint(1)?,
                        _ => self.uint(4)?,
                    };
                    let v = self.memo.get(&key).cloned().ok_or_else(|| {
                        PickleError::at(at, format!("memo {key} was never stored"))
                    })?;
                    self.push(v);
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.push(Value::Global(Rc::new((module, name))));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let global = Value::Global(Rc::new((m.to_string(), n.to_string())));
                            self.push(global);
                        }
                        _ => return err(at, "STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.push(v);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    match self.top()? {
                        Value::Object(o) => *o.state.borrow_mut() = Some(state),
                        _ => return err(at, "BUILD on something that is not an object"),
                    }
                }
                other => return err(at, format!("unsupported pickle opcode {other:#04x}")),
            }
        }
    }
}
