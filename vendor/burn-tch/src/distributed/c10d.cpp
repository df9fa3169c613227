// arcface's addition to burn-tch: libtorch's c10d (the engine under torch.distributed) for
// multi-process training. A TCPStore rendezvous at MASTER_ADDR:MASTER_PORT and one process
// group over it: ProcessGroupGloo on the CPU, ProcessGroupNCCL on CUDA (compiled where CUDA's
// and NCCL's headers were found, ARCFACE_C10D_NCCL). Tensors are passed as tch passes them
// (`at::Tensor*`); errors come back as a strdup'ed message (freed with arcface_free_error),
// nullptr on success.
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef ARCFACE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

char* fail(const std::exception& e) { return strdup(e.what()); }

// Waits for a collective, as torch.distributed does for a synchronous call.
void wait(Group* group, const c10::intrusive_ptr<c10d::Work>& work) {
  if (!work->wait(group->timeout)) {
    throw std::runtime_error("collective did not complete");
  }
}

}  // namespace

extern "C" {

int arcface_c10d_has_nccl() {
#ifdef ARCFACE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

// A client (and, with is_server, the server) of the TCPStore at host:port; `workers` ranks meet
// there. Keys go under `prefix` when it is not empty (c10d's PrefixStore, as torch.distributed
// keeps a torchrun agent's store apart per restart: "/worker/attempt_N").
char* arcface_c10d_store(const char* host, int port, int is_server, int workers,
                         int64_t timeout_ms, const char* prefix, void** store) {
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<uint16_t>(port);
    options.isServer = is_server != 0;
    options.numWorkers = workers;
    options.waitWorkers = false;
    options.timeout = std::chrono::milliseconds(timeout_ms);
    c10::intrusive_ptr<c10d::Store> created =
        c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
    std::string under(prefix);
    if (!under.empty()) created = c10::make_intrusive<c10d::PrefixStore>(under, created);
    *store = new c10::intrusive_ptr<c10d::Store>(std::move(created));
    return nullptr;
  } catch (const std::exception& e) {
    return fail(e);
  }
}

void arcface_c10d_store_free(void* store) {
  delete static_cast<c10::intrusive_ptr<c10d::Store>*>(store);
}

char* arcface_c10d_store_set(void* store, const char* key, const uint8_t* value, int64_t len) {
  try {
    auto& s = *static_cast<c10::intrusive_ptr<c10d::Store>*>(store);
    s->set(std::string(key), std::vector<uint8_t>(value, value + len));
    return nullptr;
  } catch (const std::exception& e) {
    return fail(e);
  }
}

// The value of `key`, waiting for it up to the store's timeout; *value is malloc'ed (free it
// with arcface_free_error).
char* arcface_c10d_store_get(void* store, const char* key, uint8_t** value, int64_t* len) {
  try {
    auto& s = *static_cast<c10::intrusive_ptr<c10d::Store>*>(store);
    auto bytes = s->get(std::string(key));
    *len = static_cast<int64_t>(bytes.size());
    *value = static_cast<uint8_t*>(std::malloc(bytes.size() + 1));
    std::memcpy(*value, bytes.data(), bytes.size());
    return nullptr;
  } catch (const std::exception& e) {
    return fail(e);
  }
}

// The process group of `rank` in a world of `world` over `store` (which it shares): "gloo"
// with its TCP device on `interface` (a network interface name, as GLOO_SOCKET_IFNAME) or, if
// empty, torch.distributed's default (the address this machine's hostname resolves to, else
// loopback); "nccl" on the current CUDA device.
char* arcface_c10d_group(void* store, const char* backend, int rank, int world,
                         int64_t timeout_ms, const char* interface, void** group) {
  try {
    auto& s = *static_cast<c10::intrusive_ptr<c10d::Store>*>(store);
    auto timeout = std::chrono::milliseconds(timeout_ms);
    std::string which(backend);
    c10::intrusive_ptr<c10d::Backend> pg;
    if (which == "gloo") {
      auto options = c10d::ProcessGroupGloo::Options::create();
      options->timeout = timeout;
      std::string iface(interface);
      options->devices.push_back(iface.empty()
                                     ? c10d::ProcessGroupGloo::createDefaultDevice()
                                     : c10d::ProcessGroupGloo::createDeviceForInterface(iface));
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(s, rank, world, options);
    } else if (which == "nccl") {
#ifdef ARCFACE_C10D_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(s, rank, world, options);
#else
      throw std::runtime_error(
          "this binary's c10d shim was built without NCCL (CUDA's and NCCL's headers were not "
          "found at build time: pip install \"nvidia-cuda-crt==13.0.*\" \"nvidia-cuda-cccl==13.0.*\" "
          "into the torch venv and rebuild)");
#endif
    } else {
      throw std::runtime_error("unknown c10d backend `" + which + "`");
    }
    *group = new Group{s, pg, timeout};
    return nullptr;
  } catch (const std::exception& e) {
    return fail(e);
  }
}

void arcface_c10d_group_free(void* group) { delete static_cast<Group*>(group); }

// op: 0 sum, 1 max.
char* arcface_c10d_all_reduce(void* group, const at::Tensor* tensor, int op) {
  try {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = op == 1 ? c10d::ReduceOp(c10d::ReduceOp::MAX)
                               : c10d::ReduceOp(c10d::ReduceOp::SUM);
    wait(g, g->backend->allreduce(tensors, options));
    return nullptr;
  } catch (const std::exception& e) {
    return fail(e);
  }
}

char* arcface_c10d_broadcast(void* group, const at::Tensor* tensor, int root) {
  try {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    wait(g, g->backend->broadcast(tensors, options));
    return nullptr;
  } catch (const std::exception& e) {
    return fail(e);
  }
}

// Every rank's `input` into `output`, which holds world × input's elements, rank r's at r.
char* arcface_c10d_all_gather(void* group, const at::Tensor* input, const at::Tensor* output) {
  try {
    auto* g = static_cast<Group*>(group);
    int world = g->backend->getSize();
    auto flat = output->view({world, -1});
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < world; ++r) outputs[0].push_back(flat[r].view(input->sizes()));
    std::vector<at::Tensor> inputs{*input};
    wait(g, g->backend->allgather(outputs, inputs));
    return nullptr;
  } catch (const std::exception& e) {
    return fail(e);
  }
}

// Point to point: `tensor` to rank `peer` (send) or from it into `tensor` (recv). Rank 0 gathers
// the head's shards into the checkpoint it writes, and sends each rank its rows on resume, so
// that no rank but 0 needs the output folder (machines without a shared disk).
char* arcface_c10d_send(void* group, const at::Tensor* tensor, int peer) {
  try {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    wait(g, g->backend->send(tensors, peer, 0));
    return nullptr;
  } catch (const std::exception& e) {
    return fail(e);
  }
}

char* arcface_c10d_recv(void* group, const at::Tensor* tensor, int peer) {
  try {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    wait(g, g->backend->recv(tensors, peer, 0));
    return nullptr;
  } catch (const std::exception& e) {
    return fail(e);
  }
}

}  // extern "C"
