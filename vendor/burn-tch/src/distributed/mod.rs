//! arcface's addition to burn-tch: libtorch's c10d, the engine under `torch.distributed`, bound
//! through `c10d.cpp` beside this file (tch binds none of it): a TCPStore rendezvous and one
//! process group, Gloo on the CPU and NCCL on CUDA, with the collectives training needs. Each
//! call blocks until its collective has completed, as a synchronous torch.distributed call.
//!
//! Only built where the libtorch headers were found (`cfg(fused_ops)`); elsewhere every
//! constructor returns an error.

use std::ffi::{CString, c_char, c_int, c_void};

use crate::TchTensor;

/// Whether this build's shim has ProcessGroupNCCL (a CUDA build of torch with its CUDA runtime
/// and NCCL headers present at build time).
pub fn has_nccl() -> bool {
    #[cfg(fused_ops)]
    {
        unsafe { ffi::arcface_c10d_has_nccl() != 0 }
    }
    #[cfg(not(fused_ops))]
    false
}

fn c_string(text: &str, what: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("{what} contains a NUL byte"))
}

/// A c10d TCPStore client (on rank 0 also the server): the key-value rendezvous the process
/// group meets at, and where arcface's ranks leave their heartbeats.
pub struct Store {
    raw: *mut c_void,
}

// c10d's TCPStore serialises its requests (one socket, under a lock).
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// Connects to (`is_server`: also serves) the store at `host:port`, for `workers` ranks,
    /// waiting up to `timeout_ms` for the server and for each later `get`; keys under `prefix`
    /// when not empty.
    pub fn connect(
        host: &str,
        port: u16,
        is_server: bool,
        workers: usize,
        timeout_ms: u64,
        prefix: &str,
    ) -> Result<Store, String> {
        #[cfg(fused_ops)]
        {
            let host_c = c_string(host, "the store's host")?;
            let prefix_c = c_string(prefix, "the store's key prefix")?;
            let mut raw = std::ptr::null_mut();
            let error = unsafe {
                ffi::arcface_c10d_store(
                    host_c.as_ptr(),
                    c_int::from(port),
                    c_int::from(is_server),
                    workers as c_int,
                    timeout_ms as i64,
                    prefix_c.as_ptr(),
                    &mut raw,
                )
            };
            crate::fused::ffi::take_error(error, &format!("TCPStore at {host}:{port}"))?;
            Ok(Store { raw })
        }
        #[cfg(not(fused_ops))]
        {
            let _ = (host, port, is_server, workers, timeout_ms, prefix, c_string);
            Err("burn-tch was built without the libtorch headers: no c10d".into())
        }
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        #[cfg(fused_ops)]
        {
            let key_c = c_string(key, "a store key")?;
            let error = unsafe {
                ffi::arcface_c10d_store_set(
                    self.raw,
                    key_c.as_ptr(),
                    value.as_ptr(),
                    value.len() as i64,
                )
            };
            crate::fused::ffi::take_error(error, &format!("TCPStore set `{key}`"))
        }
        #[cfg(not(fused_ops))]
        {
            let _ = (key, value);
            unreachable!("no Store without the shim")
        }
    }

    /// The value of `key`, waiting for another rank to set it up to the store's timeout.
    pub fn get(&self, key: &str) -> Result<Vec<u8>, String> {
        #[cfg(fused_ops)]
        {
            let key_c = c_string(key, "a store key")?;
            let mut value: *mut u8 = std::ptr::null_mut();
            let mut len = 0i64;
            let error = unsafe {
                ffi::arcface_c10d_store_get(self.raw, key_c.as_ptr(), &mut value, &mut len)
            };
            crate::fused::ffi::take_error(error, &format!("TCPStore get `{key}`"))?;
            let bytes = unsafe { std::slice::from_raw_parts(value, len as usize) }.to_vec();
            unsafe { crate::fused::ffi::arcface_free_error(value as *mut c_char) };
            Ok(bytes)
        }
        #[cfg(not(fused_ops))]
        {
            let _ = key;
            unreachable!("no Store without the shim")
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        #[cfg(fused_ops)]
        unsafe {
            ffi::arcface_c10d_store_free(self.raw)
        };
    }
}

/// Which c10d backend a [`ProcessGroup`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// ProcessGroupGloo: CPU tensors, TCP.
    Gloo,
    /// ProcessGroupNCCL: CUDA tensors.
    Nccl,
}

/// A reduction of [`ProcessGroup::all_reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise maximum.
    Max,
}

/// A c10d process group (`c10d::Backend`): this rank of `world`, over a [`Store`].
pub struct ProcessGroup {
    raw: *mut c_void,
    rank: usize,
    world: usize,
}

// c10d's backends are driven from one thread at a time here; the handle itself moves freely.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group of `world` ranks as `rank`. Gloo's TCP device binds `interface` (a
    /// network interface, as GLOO_SOCKET_IFNAME) if given, else torch.distributed's default
    /// (the address of this machine's hostname, else loopback); NCCL picks its own
    /// (NCCL_SOCKET_IFNAME). Collectives that do not complete within `timeout_ms` fail.
    pub fn new(
        store: &Store,
        backend: Backend,
        rank: usize,
        world: usize,
        timeout_ms: u64,
        interface: Option<&str>,
    ) -> Result<ProcessGroup, String> {
        #[cfg(fused_ops)]
        {
            let name = match backend {
                Backend::Gloo => "gloo",
                Backend::Nccl => "nccl",
            };
            let name_c = c_string(name, "backend")?;
            let interface_c = c_string(interface.unwrap_or(""), "the interface")?;
            let mut raw = std::ptr::null_mut();
            let error = unsafe {
                ffi::arcface_c10d_group(
                    store.raw,
                    name_c.as_ptr(),
                    rank as c_int,
                    world as c_int,
                    timeout_ms as i64,
                    interface_c.as_ptr(),
                    &mut raw,
                )
            };
            crate::fused::ffi::take_error(error, &format!("ProcessGroup{}", name.to_uppercase()))?;
            Ok(ProcessGroup { raw, rank, world })
        }
        #[cfg(not(fused_ops))]
        {
            let _ = (store, backend, rank, world, timeout_ms, interface);
            Err("burn-tch was built without the libtorch headers: no c10d".into())
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Reduces `tensor` over the ranks, in place (every rank ends with the result).
    pub fn all_reduce(&self, tensor: &TchTensor, op: ReduceOp) -> Result<(), String> {
        #[cfg(fused_ops)]
        {
            let error = unsafe {
                ffi::arcface_c10d_all_reduce(
                    self.raw,
                    tensor.tensor.as_ptr() as *const _,
                    match op {
                        ReduceOp::Sum => 0,
                        ReduceOp::Max => 1,
                    },
                )
            };
            crate::fused::ffi::take_error(error, "all_reduce")
        }
        #[cfg(not(fused_ops))]
        {
            let _ = (tensor, op);
            unreachable!("no ProcessGroup without the shim")
        }
    }

    /// `root`'s `tensor` into every rank's, in place.
    pub fn broadcast(&self, tensor: &TchTensor, root: usize) -> Result<(), String> {
        #[cfg(fused_ops)]
        {
            let error = unsafe {
                ffi::arcface_c10d_broadcast(
                    self.raw,
                    tensor.tensor.as_ptr() as *const _,
                    root as c_int,
                )
            };
            crate::fused::ffi::take_error(error, "broadcast")
        }
        #[cfg(not(fused_ops))]
        {
            let _ = (tensor, root);
            unreachable!("no ProcessGroup without the shim")
        }
    }

    /// Every rank's `input` into `output` (world × input's elements, contiguous; rank r's
    /// copy at r).
    pub fn all_gather(&self, input: &TchTensor, output: &TchTensor) -> Result<(), String> {
        #[cfg(fused_ops)]
        {
            let error = unsafe {
                ffi::arcface_c10d_all_gather(
                    self.raw,
                    input.tensor.as_ptr() as *const _,
                    output.tensor.as_ptr() as *const _,
                )
            };
            crate::fused::ffi::take_error(error, "all_gather")
        }
        #[cfg(not(fused_ops))]
        {
            let _ = (input, output);
            unreachable!("no ProcessGroup without the shim")
        }
    }

    /// `tensor` (contiguous) to rank `peer`, which receives it with [`ProcessGroup::recv`].
    pub fn send(&self, tensor: &TchTensor, peer: usize) -> Result<(), String> {
        #[cfg(fused_ops)]
        {
            let error = unsafe {
                ffi::arcface_c10d_send(self.raw, tensor.tensor.as_ptr() as *const _, peer as c_int)
            };
            crate::fused::ffi::take_error(error, "send")
        }
        #[cfg(not(fused_ops))]
        {
            let _ = (tensor, peer);
            unreachable!("no ProcessGroup without the shim")
        }
    }

    /// Rank `peer`'s [`ProcessGroup::send`] into `tensor` (contiguous, of the sent shape).
    pub fn recv(&self, tensor: &TchTensor, peer: usize) -> Result<(), String> {
        #[cfg(fused_ops)]
        {
            let error = unsafe {
                ffi::arcface_c10d_recv(self.raw, tensor.tensor.as_ptr() as *const _, peer as c_int)
            };
            crate::fused::ffi::take_error(error, "recv")
        }
        #[cfg(not(fused_ops))]
        {
            let _ = (tensor, peer);
            unreachable!("no ProcessGroup without the shim")
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        #[cfg(fused_ops)]
        unsafe {
            ffi::arcface_c10d_group_free(self.raw)
        };
    }
}

#[cfg(fused_ops)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    use torch_sys::C_tensor;

    unsafe extern "C" {
        pub fn arcface_c10d_has_nccl() -> c_int;
        pub fn arcface_c10d_store(
            host: *const c_char,
            port: c_int,
            is_server: c_int,
            workers: c_int,
            timeout_ms: i64,
            prefix: *const c_char,
            store: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn arcface_c10d_store_free(store: *mut c_void);
        pub fn arcface_c10d_store_set(
            store: *mut c_void,
            key: *const c_char,
            value: *const u8,
            len: i64,
        ) -> *mut c_char;
        pub fn arcface_c10d_store_get(
            store: *mut c_void,
            key: *const c_char,
            value: *mut *mut u8,
            len: *mut i64,
        ) -> *mut c_char;
        pub fn arcface_c10d_group(
            store: *mut c_void,
            backend: *const c_char,
            rank: c_int,
            world: c_int,
            timeout_ms: i64,
            interface: *const c_char,
            group: *mut *mut c_void,
        ) -> *mut c_char;
        pub fn arcface_c10d_group_free(group: *mut c_void);
        pub fn arcface_c10d_all_reduce(
            group: *mut c_void,
            tensor: *const C_tensor,
            op: c_int,
        ) -> *mut c_char;
        pub fn arcface_c10d_broadcast(
            group: *mut c_void,
            tensor: *const C_tensor,
            root: c_int,
        ) -> *mut c_char;
        pub fn arcface_c10d_all_gather(
            group: *mut c_void,
            input: *const C_tensor,
            output: *const C_tensor,
        ) -> *mut c_char;
        pub fn arcface_c10d_send(group: *mut c_void, tensor: *const C_tensor, peer: c_int)
        -> *mut c_char;
        pub fn arcface_c10d_recv(group: *mut c_void, tensor: *const C_tensor, peer: c_int)
        -> *mut c_char;
    }
}
