#include "xcpipe/worker/worker_actor.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "xcpipe/base/exit_codes.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/control/socket.h"
#include "xcpipe/model/sampling.h"
#include "xcpipe/model/stage_model.h"
#include "xcpipe/transport/tcp_data_plane.h"
#include "xcpipe/transport/tcp_link.h"
#ifdef XCPIPE_HAVE_CUDA
#include "xcpipe/cuda/device.h"
#include "xcpipe/transport/nccl_data_plane.h"
#endif
#include "xcpipe/worker/compute_watchdog.h"
#include "xcpipe/worker/resource_sampler.h"

namespace xcpipe::worker {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::atomic<bool> g_stop_requested{false};
void OnTerminate(int) { g_stop_requested.store(true); }

uint64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

std::string HostName() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

// How long a hand-off to the next stage may take before the step is reported as failed. The
// receiver drains its socket on its own thread, so a live neighbour takes a hand-off at once;
// the bound stays well under the heartbeat timeout so a dead neighbour never makes this
// stage look dead too (the actor sends no heartbeats while it waits).
constexpr auto kSendDeadline = 1s;
// How long an activation may wait for its sequences' admission before it is refused.
constexpr auto kDeferLimit = 10s;
// The receiver thread's wait for one message; also how soon it notices a new plane or a stop.
constexpr auto kReceivePoll = 200ms;
// How long a new assignment waits for the receiver thread to leave the previous plane before
// it goes on (a frame read by the old plane would be lost to the new one). A receive returns
// within kReceivePoll, or at once when an NCCL transfer under way is aborted.
constexpr auto kReceiverLeaveTimeout = 1s;
// How long the NCCL links of an assignment may take to join, counted from the assignment. Both
// neighbours start their communicators as soon as their assignment arrives, before loading
// (the join runs on NCCL's own threads while the weights load), so a neighbour that has not
// joined by then never will: it died, or cannot reach the NCCL bootstrap. The actor checks
// between loads only, so a stage that loads for longer finds out right after its load.
constexpr auto kNcclJoinTimeout = 30s;
// While its links join, a stage sends loadProgress this often: the coordinator re-sends an
// assignment it hears nothing about, and a repeat must not look like silence.
constexpr auto kJoinProgressInterval = 1s;

enum class State { kIdle, kLoading, kReady, kServing, kDraining };
const char* StateName(State s) {
  switch (s) {
    case State::kIdle: return "idle";
    case State::kLoading: return "loading";
    case State::kReady: return "ready";
    case State::kServing: return "serving";
    case State::kDraining: return "draining";
  }
  return "?";
}

struct SequenceState {
  model::Sampler sampler;
  std::vector<int64_t> context;  // penalty context: before generation + every sampled token
  int64_t prefill_rows = 0;      // a step ending before this many rows samples nothing
};

// A step waiting to run: from the control plane (first stage) or the data plane.
struct PendingStep {
  uint64_t epoch = 0, micro_batch = 0, step = 0;
  std::vector<model::Segment> segments;
  model::StepInput input;
  std::vector<int64_t> stage_micros;
  bool want_logits = false;
  transport::StageMessage keep_alive;  // owns the received bytes `input` points into
  Clock::time_point arrived = Clock::now();
};

at::ScalarType ToTorch(transport::DType d) {
  switch (d) {
    case transport::DType::kF32: return at::kFloat;
    case transport::DType::kBF16: return at::kBFloat16;
    case transport::DType::kF16: return at::kHalf;
    case transport::DType::kI64: return at::kLong;
    case transport::DType::kU8: return at::kByte;
    case transport::DType::kBool: return at::kBool;
  }
  return at::kFloat;
}

// The dtype of the checkpoint's floating tensors (the first one found).
checkpoint::DType FirstFloatingDType(const std::vector<checkpoint::TensorInfo>& tensors) {
  for (const auto& t : tensors) {
    if (t.dtype == checkpoint::DType::kF32 || t.dtype == checkpoint::DType::kBF16 || t.dtype == checkpoint::DType::kF16) {
      return t.dtype;
    }
  }
  return checkpoint::DType::kF32;
}

std::span<const std::byte> BytesOf(const at::Tensor& t) {
  return {static_cast<const std::byte*>(t.data_ptr()), static_cast<size_t>(t.numel()) * t.element_size()};
}

// "cuda:N" -> N; nullopt for any other device ("cpu").
std::optional<int> CudaOrdinal(const std::string& device) {
  if (device.rfind("cuda:", 0) != 0 || device.size() == 5) return std::nullopt;
  int ordinal = 0;
  for (char c : device.substr(5)) {
    if (c < '0' || c > '9' || ordinal > 1000) return std::nullopt;
    ordinal = ordinal * 10 + (c - '0');
  }
  return ordinal;
}

}  // namespace

struct WorkerActor::Impl {
  WorkerOptions opt;
  zmq::context_t context;
  std::unique_ptr<control::ControlSocket> control;
  zmq::socket_t wake_rx{context, zmq::socket_type::pair};
  zmq::socket_t wake_tx{context, zmq::socket_type::pair};
  // The data address announced in hello: one listener for the life of the process, whatever
  // the plans (TCP frames, or NCCL headers, from the previous stage arrive here).
  std::unique_ptr<transport::TcpReceiverLink> receiver;
  // The data plane of the current assignment once usable (TCP: connected; NCCL: joined); null
  // before that, between assignments and for a single-stage pipeline. The actor sends through
  // it; the receiver thread takes a copy for each Receive and says which plane it is in, so a
  // new assignment can wait until it has left the old one. Written by the actor only, under
  // plane_mutex (the actor reads it without the lock).
  std::mutex plane_mutex;
  std::condition_variable plane_cv;
  std::shared_ptr<transport::DataPlane> plane;
  const transport::DataPlane* receiving_on = nullptr;  // guarded by plane_mutex
  std::thread plane_reaper;                            // aborts and releases a retired plane (see RetirePlane)
#ifdef XCPIPE_HAVE_CUDA
  // NCCL links of the current assignment while they join (polled by the actor's loop).
  std::shared_ptr<transport::NcclDataPlane> joining;
  Clock::time_point join_deadline, next_join_progress;
#endif
  // The assignment is loaded and waits for its NCCL links before it answers stageReady.
  bool links_pending = false;
  std::thread receiver_thread;
  std::atomic<bool> stop{false};
  std::mutex queue_mutex;
  std::deque<transport::StageMessage> queue;

  State state = State::kIdle;
  uint64_t epoch = 0;
  bool welcomed = false;
  // This process's control-plane identity (ProcessRoutingId of the worker id).
  std::string routing_id;
  // Since when the coordinator has refused this worker's id as held by another live process:
  // the holder may be this worker's previous process whose connection has not closed yet, so
  // the hello is repeated until the holder would have missed its heartbeats, then given up.
  std::optional<Clock::time_point> id_refused_since;
  Clock::time_point last_from_coordinator = Clock::now();
  Clock::time_point next_heartbeat = Clock::now();
  Clock::time_point last_hello = Clock::now() - std::chrono::hours(1);
  uint64_t heartbeat_seq = 0;
  uint64_t steps_completed = 0;
  // Monitoring (sent in heartbeats): recent step times, bytes sent by earlier senders, budget.
  StepTimeWindow step_times;
  uint64_t bytes_sent_before = 0;
  uint64_t kv_budget = 0;

  // Assignment.
  uint64_t assigned_epoch = 0;     // epoch of the last assignment taken (a repeat is recognised)
  std::string data_plane = "tcp";  // of that assignment: "tcp" or "nccl"
  bool weights_kept = false;       // its blocks were already loaded
  Clock::time_point assign_started;
  uint32_t stage_index = 0, stage_count = 0;
  model::BlockRange range;
  std::string model_path, dtype, overrides;
  std::unique_ptr<model::StageModel> model;
  std::map<uint64_t, SequenceState> sequences;
  // Stage 0: the image embedding rows of each sequence whose prompt is still prefilling, in
  // prompt order, and how many of them its steps have used. An image is encoded when the step
  // holding its first row arrives; a prompt prefilled in pieces takes the rest with later steps.
  struct ImageRows {
    std::vector<at::Tensor> pending;  // encoded images not used up, oldest first
    int64_t used = 0;                 // rows of pending.front() already placed
  };
  std::map<uint64_t, ImageRows> image_rows;
  // This step's image embedding rows for each segment, in row order: `slots` rows per segment
  // (its -1 token ids), taken from its ImageRows, encoding `images` (the step's, in segment
  // order) as a segment runs short. Rows of an image left over stay for the sequence's next step.
  StatusOr<std::vector<at::Tensor>> TakeImageRows(const std::vector<model::Segment>& segments,
                                                  const std::vector<int64_t>& slots, std::vector<at::Tensor> images);
  std::deque<PendingStep> deferred;
  int exit_code = -1;
  // The compute watchdog (its own thread and socket) and what it reads of this actor.
  std::atomic<uint64_t> watchdog_epoch{0}, watchdog_steps{0};
  uint64_t computing_micro_batch = 0;  // named in heartbeats while a step runs
  uint64_t decoder_layer_micros = 0, decoder_layers_timed = 0;  // speed figure for rebalancing
  // While alive, the actor is computing `micro_batch`: heartbeats name it and the compute
  // watchdog watches it for progress.
  struct ComputeScope {
    Impl& impl;
    ComputeScope(Impl& i, uint64_t micro_batch, int64_t rows) : impl(i) {
      impl.computing_micro_batch = micro_batch;
      if (impl.watchdog) impl.watchdog->BeginStep(rows, micro_batch);
    }
    ~ComputeScope() {
      if (impl.watchdog) impl.watchdog->EndStep();
      impl.computing_micro_batch = 0;
    }
    ComputeScope(const ComputeScope&) = delete;
    ComputeScope& operator=(const ComputeScope&) = delete;
  };
  std::unique_ptr<ComputeWatchdog> watchdog;

  bool is_last() const { return stage_index + 1 == stage_count; }

  void SendEnvelope(capnp::MallocMessageBuilder& m) {
    if (auto st = control->Send(m); !st.ok()) spdlog::warn("control send failed: {}", st.ToString());
  }
  void SendError(const Status& status, uint64_t request_id) {
    capnp::MallocMessageBuilder m;
    wire::SetError(m.initRoot<proto::Envelope>(), status, request_id);
    SendEnvelope(m);
  }
  void SendHello();
  void SendHeartbeat();
  void FillResources(proto::ResourceSample::Builder r);
  void Dispatch(const proto::Envelope::Reader& env);
  void OnAssign(proto::AssignStage::Reader a);
  // The data-plane part of an assignment that does not depend on the weights: checks what was
  // asked for and, for NCCL, starts the communicators (before loading; see kNcclJoinTimeout).
  Status StartDataPlane(proto::AssignStage::Reader a);
  // After loading: TCP connects now and the stage is ready; NCCL waits in PollLinks.
  Status FinishDataPlane(const std::string& next_address);
  // Advances joining NCCL links: stageReady once joined, an error naming the stage when they
  // fail or the join deadline passes.
  void PollLinks();
  void PublishPlane(std::shared_ptr<transport::DataPlane> ready);
  // Takes the current plane (and links still joining) out of service; see the definition.
  // `next_is_nccl`: the plane that follows reads headers in the other mode or of another epoch.
  void RetirePlane(bool next_is_nccl = false);
  void SendStageReady();
  // Stops the receiver thread and retires the plane (process exit). Idempotent.
  void StopDataPlane();
  void OnAdmit(proto::AdmitSequence::Reader a);
  void OnForward(proto::Forward::Reader f);
  void OnData(transport::StageMessage message);
  bool Admitted(const std::vector<model::Segment>& segments) const;
  void RunStep(PendingStep& step);
  void RetryDeferred();
  void ReceiverLoop();
};

void WorkerActor::Impl::SendHello() {
  capnp::MallocMessageBuilder m;
  auto hello = m.initRoot<proto::Envelope>().initHello();
  hello.setProtocolVersion(proto::K_PROTOCOL_VERSION);
  hello.setRole(proto::Role::WORKER);
  hello.setWorkerId(opt.worker_id);
  hello.setEpoch(epoch);
  auto caps = hello.initCapabilities();
  caps.setHost(HostName());
  caps.setPid(static_cast<uint32_t>(getpid()));
  caps.setDevice(opt.device.device);
  caps.setDeviceName(opt.device.device_name);
  caps.setMemoryBytes(opt.memory_limit_bytes ? opt.memory_limit_bytes : opt.device.total_bytes);
  caps.setFreeMemoryBytes(opt.device.free_bytes);
  // NCCL moves device memory: only a CUDA build computing on a CUDA device offers it.
  const bool nccl = BuiltWithCuda() && CudaOrdinal(opt.device.device).has_value();
  auto planes = caps.initDataPlanes(nccl ? 2 : 1);
  planes.set(0, "tcp");
  if (nccl) planes.set(1, "nccl");
  caps.setDataAddress(opt.data_advertise.empty() ? receiver->local_endpoint().ToString() : opt.data_advertise);
  caps.setThreads(static_cast<uint32_t>(opt.threads));
  caps.setBuildVersion("0.1.0");
  const bool on_cuda = CudaOrdinal(opt.device.device).has_value();
  auto dtypes = caps.initComputeDtypes(on_cuda ? 3 : 2);
  dtypes.set(0, "f32");
  dtypes.set(1, "bf16");
  if (on_cuda) dtypes.set(2, "f16");
  caps.setKernels(on_cuda || opt.kernels == model::KernelPath::kGeneric ? "generic" : "cpu-fast");
  caps.setMemoryBandwidthBytesPerS(opt.device.memory_bandwidth_bytes_per_s);
  caps.setMatmulTflops(opt.device.matmul_tflops);
  SendEnvelope(m);
  last_hello = Clock::now();
}

void WorkerActor::Impl::SendHeartbeat() {
  capnp::MallocMessageBuilder m;
  auto hb = m.initRoot<proto::Envelope>().initHeartbeat();
  hb.setSequence(++heartbeat_seq);
  hb.setSentAtUnixMs(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count()));
  hb.setEpoch(epoch);
  hb.setStepsCompleted(steps_completed);
  hb.setMicroBatch(computing_micro_batch);
  hb.setResidentBytes(ResidentBytes());
  FillResources(hb.initResources());
  SendEnvelope(m);
}

void WorkerActor::Impl::FillResources(proto::ResourceSample::Builder r) {
  MemoryReading memory = ReadMemory(opt.device.device);
  if (const auto allocator = model::ReadCudaAllocator(opt.device.device)) {
    // This process's tensors as libtorch's caching allocator counts them, not total minus free
    // (which would count every other process on the GPU).
    memory.used_bytes = allocator->allocated_bytes;
    memory.allocator_bytes = allocator->reserved_bytes;
  }
  uint64_t capacity = opt.memory_limit_bytes ? opt.memory_limit_bytes : opt.device.total_bytes;
  if (memory.device_total_bytes > 0 && !opt.memory_limit_bytes) capacity = memory.device_total_bytes;
  r.setCapacityBytes(capacity);
  r.setUsedBytes(memory.used_bytes);
  r.setDeviceFreeBytes(memory.device_free_bytes);
  r.setAllocatorBytes(memory.allocator_bytes);
  const uint64_t weights = model ? model->weight_bytes() : 0;
  const uint64_t kv = model ? model->kv_bytes_reserved() : 0;
  auto used = r.initUsed();
  used.setWeightBytes(weights);
  used.setKvBytes(kv);
  // What is neither weights nor KV: activations, receive buffers and the runtime itself.
  used.setActivationBytes(memory.used_bytes > weights + kv ? memory.used_bytes - weights - kv : 0);
  r.setKvBudgetBytes(kv_budget);
  r.setKvReservedBytes(kv);
  r.setKvUsedBytes(model ? model->kv_bytes_used() : 0);
  const StepTimeSummary steps = step_times.Summarize(Clock::now());
  r.setStepP50Micros(steps.p50_micros);
  r.setStepP99Micros(steps.p99_micros);
  r.setStepsInWindow(steps.steps);
  r.setWindowMs(steps.window_ms);
  r.setIdleFraction(steps.idle_fraction);
  r.setBusyMicrosTotal(step_times.busy_micros_total());
  r.setDecoderLayerMicrosTotal(decoder_layer_micros);
  r.setDecoderLayersTimed(decoder_layers_timed);
  r.setBytesSent(bytes_sent_before + (plane ? plane->stats().bytes_sent : 0));
  size_t queued = deferred.size();
  {
    std::lock_guard<std::mutex> lock(queue_mutex);
    queued += queue.size();
  }
  r.setQueuedSteps(static_cast<uint32_t>(queued));
}

void WorkerActor::Impl::OnAssign(proto::AssignStage::Reader a) {
  if (a.getEpoch() < epoch) {
    SendError(FailedPreconditionError("assignment of epoch " + std::to_string(a.getEpoch()) +
                                      " is older than this worker's epoch " + std::to_string(epoch)), 0);
    return;
  }
  // A repeat of the assignment in hand (the coordinator re-sends one it heard nothing about).
  // NCCL unique ids are single-use: links joining or joined are kept, not rebuilt.
  if (a.getEpoch() == assigned_epoch && data_plane == "nccl" && a.getDataPlane() == "nccl" &&
      a.getStageIndex() == stage_index && model) {
    if (links_pending) return;  // stageReady follows once they have joined
    if (state == State::kReady || state == State::kServing) return SendStageReady();
  }
  const model::BlockRange new_range{a.getBlockBegin(), a.getBlockEnd()};
  const std::string new_path = a.getModelPath().cStr(), new_dtype = a.getDtype().cStr();
  const std::string new_overrides = a.getSpecOverrides().cStr();
  const bool same_blocks = model && new_range.begin == range.begin && new_range.end == range.end &&
                           new_path == model_path && new_dtype == dtype && new_overrides == overrides;
  epoch = a.getEpoch();
  stage_index = a.getStageIndex();
  stage_count = a.getStageCount();
  sequences.clear();
  image_rows.clear();
  deferred.clear();
  state = State::kLoading;
  if (opt.on_state_change) opt.on_state_change(StateName(state));  // the loop sees only the end state
  const auto started = Clock::now();
  assign_started = started;
  assigned_epoch = epoch;
  // The previous plan's links go first: NCCL links of this one start now, before the load.
  if (Status st = StartDataPlane(a); !st.ok()) {
    state = State::kIdle;
    return SendError(st.WithContext("stage " + std::to_string(stage_index)), 0);
  }
  if (!same_blocks) {
    model.reset();
    range = new_range;
    model_path = new_path;
    dtype = new_dtype;
    overrides = new_overrides;
    auto described = checkpoint::DescribeCheckpoint(model_path);
    if (!described.ok()) {
      state = State::kIdle;
      return SendError(described.status().WithContext("stage " + std::to_string(stage_index)), 0);
    }
    checkpoint::ModelSpec spec = described->spec;
    if (!overrides.empty()) {
      try {
        auto j = nlohmann::json::parse(overrides);
        if (j.contains("vision_heads")) spec.vision.heads = j["vision_heads"].get<int64_t>();
        if (j.contains("qformer_heads")) spec.vision.qformer_heads = j["qformer_heads"].get<int64_t>();
      } catch (const std::exception& e) {
        state = State::kIdle;
        return SendError(InvalidArgumentError(std::string("specOverrides is not valid JSON: ") + e.what()), 0);
      }
    }
    model::StageOptions so;
    so.device = opt.device.device;
    so.kernels = opt.kernels;
    if (dtype.empty() || dtype == "auto") {
      // An older coordinator, or one that left the choice to the worker: its device's default.
      const checkpoint::DType stored =
          FirstFloatingDType(described->tensors.tensors);
      so.dtype = model::DefaultComputeDType(so.device, stored);
    } else {
      auto parsed = model::ParseComputeDType(dtype);
      if (!parsed.ok()) {
        state = State::kIdle;
        return SendError(parsed.status().WithContext("stage " + std::to_string(stage_index)), 0);
      }
      so.dtype = *parsed;
    }
    if (Status st = model::CheckComputeDevice(so.device, so.dtype); !st.ok()) {
      state = State::kIdle;
      return SendError(st.WithContext("stage " + std::to_string(stage_index)), 0);
    }
    so.kv_budget_bytes = a.getKvBudgetBytes();
    so.decoder_layer_timed = [this](int64_t micros) {
      micros = std::max<int64_t>(0, micros);
      if (opt.slowdown_factor > 1.0) {
        // Fault injection: a device this much slower, in proportion to the work of each layer
        // (so moving layers away from it helps, as with a real slower GPU).
        const auto extra = static_cast<int64_t>(static_cast<double>(micros) * (opt.slowdown_factor - 1.0));
        std::this_thread::sleep_for(std::chrono::microseconds(extra));
        micros += extra;
      }
      decoder_layer_micros += static_cast<uint64_t>(micros);
      ++decoder_layers_timed;
    };
    so.between_layers = [this] {
      if (watchdog) watchdog->Progress();
      if (welcomed && Clock::now() >= next_heartbeat) {
        SendHeartbeat();
        next_heartbeat = Clock::now() + control::ControlTimings::kHeartbeatInterval;
      }
    };
    so.on_progress = [this](uint64_t done, uint64_t total) {
      if (opt.on_tick) opt.on_tick();  // loading a large stage must not trip a service watchdog
#ifdef XCPIPE_HAVE_CUDA
      // Links joining meanwhile: post their warm-up as soon as they can, so a neighbour that
      // finished loading first is not kept waiting for this load (failures show in PollLinks).
      if (joining) (void)joining->PollReady();
#endif
      capnp::MallocMessageBuilder m;
      auto p = m.initRoot<proto::Envelope>().initLoadProgress();
      p.setEpoch(epoch);
      p.setStageIndex(stage_index);
      p.setBytesDone(done);
      p.setBytesTotal(total);
      SendEnvelope(m);
    };
    auto loaded = model::StageModel::Load(model_path, spec, range, so);
    if (!loaded.ok()) {
      state = State::kIdle;
      return SendError(loaded.status().WithContext("stage " + std::to_string(stage_index)), 0);
    }
    model = std::move(loaded).value();
  } else {
    model->SetKvBudget(a.getKvBudgetBytes());
  }
  model->ReleaseAllSequences();
  kv_budget = a.getKvBudgetBytes();
  step_times.Reset(Clock::now());
  weights_kept = same_blocks;
  if (Status st = FinishDataPlane(a.getNextDataAddress().cStr()); !st.ok()) {
    state = State::kIdle;
    RetirePlane();
    return SendError(st, 0);
  }
  if (links_pending) return PollLinks();  // stageReady once they have joined
  state = State::kReady;
  SendStageReady();
}

void WorkerActor::Impl::SendStageReady() {
  capnp::MallocMessageBuilder m;
  auto r = m.initRoot<proto::Envelope>().initStageReady();
  r.setEpoch(epoch);
  r.setStageIndex(stage_index);
  r.setWeightBytes(model->weight_bytes());
  r.setKvBytesPerToken(model->kv_bytes_per_token());
  r.setResidentBytes(ResidentBytes());
  r.setWeightsKept(weights_kept);
  r.setDtype(model::ComputeDTypeName(model->dtype()));
  r.setDevice(model->device());
  r.setLoadMs(static_cast<uint32_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - assign_started).count()));
  SendEnvelope(m);
  spdlog::info("stage {}/{} ready: blocks [{}, {}), {} MiB of weights, {}, on {} in {} ({} kernels), {} data plane",
               stage_index, stage_count, range.begin, range.end, model->weight_bytes() >> 20,
               weights_kept ? "kept from the previous epoch" : "loaded", model->device(),
               model::ComputeDTypeName(model->dtype()), model->cpu_fast_paths() ? "CPU fast" : "generic", data_plane);
}

Status WorkerActor::Impl::StartDataPlane(proto::AssignStage::Reader a) {
  const std::string wanted = a.getDataPlane().size() == 0 ? "tcp" : a.getDataPlane().cStr();  // older coordinators
  RetirePlane(/*next_is_nccl=*/wanted == "nccl");
  if (wanted != "tcp" && wanted != "nccl") {
    return InvalidArgumentError("dataPlane '" + wanted + "' is unknown; expected \"tcp\" or \"nccl\"");
  }
  data_plane = wanted;
  if (wanted == "tcp") return OkStatus();  // connected after the load (FinishDataPlane)
#ifndef XCPIPE_HAVE_CUDA
  return FailedPreconditionError(
      "assigned the NCCL data plane, but this worker was built without CUDA and NCCL "
      "(its hello offered only tcp)");
#else
  const std::optional<int> device = CudaOrdinal(opt.device.device);
  if (!device) {
    return FailedPreconditionError("assigned the NCCL data plane, but this worker computes on " + opt.device.device +
                                   " (its hello offered only tcp); NCCL needs a CUDA device");
  }
  const bool first = stage_index == 0, last = is_last();
  if (first && last) return OkStatus();  // one stage: no links
  transport::NcclDataPlaneOptions o;
  o.device = *device;
  o.epoch = epoch;
  o.shared_header_in = receiver.get();  // headers arrive at the address announced in hello
  auto id_of = [](capnp::Data::Reader bytes, const char* field) -> StatusOr<cuda::NcclUniqueIdBytes> {
    cuda::NcclUniqueIdBytes id{};
    if (bytes.size() != id.size()) {
      return InvalidArgumentError(std::string(field) + " has " + std::to_string(bytes.size()) +
                                  " bytes; an ncclUniqueId has " + std::to_string(id.size()));
    }
    std::copy(bytes.begin(), bytes.end(), id.begin());
    return id;
  };
  if (!first) {
    XCPIPE_ASSIGN_OR_RETURN(auto id, id_of(a.getPreviousNcclId(), "previousNcclId"));
    o.previous = transport::NcclPeerLink{id, {}};
  }
  if (!last) {
    XCPIPE_ASSIGN_OR_RETURN(auto id, id_of(a.getNextNcclId(), "nextNcclId"));
    auto endpoint = transport::TcpEndpoint::Parse(a.getNextDataAddress().cStr());
    if (!endpoint.ok()) return endpoint.status().WithContext("nextDataAddress");
    o.next = transport::NcclPeerLink{id, *endpoint};
  }
  auto started = transport::NcclDataPlane::Start(o);
  if (!started.ok()) return started.status().WithContext("starting the NCCL data plane on " + opt.device.device);
  joining = std::move(started).value();
  join_deadline = Clock::now() + kNcclJoinTimeout;
  return OkStatus();
#endif
}

Status WorkerActor::Impl::FinishDataPlane(const std::string& next_address) {
  if (data_plane == "nccl") {
#ifdef XCPIPE_HAVE_CUDA
    links_pending = joining != nullptr;
    next_join_progress = Clock::now();
#endif
    return OkStatus();
  }
  const bool first = stage_index == 0, last = is_last();
  if (first && last) return OkStatus();  // one stage: nothing to connect
  transport::TcpDataPlaneOptions o;
  if (!first) o.shared_receiver = receiver.get();
  if (!last) {
    auto endpoint = transport::TcpEndpoint::Parse(next_address);
    if (!endpoint.ok()) return endpoint.status().WithContext("nextDataAddress");
    o.next = *endpoint;
  }
  XCPIPE_ASSIGN_OR_RETURN(std::unique_ptr<transport::TcpDataPlane> tcp, transport::TcpDataPlane::Create(o));
  if (!last) {
    // Bounded well under the heartbeat timeout: a dead neighbour must not make this stage
    // look dead; the coordinator plans again and the dead one drops out.
    Status st = tcp->Connect(transport::DeadlineAfter(1500ms));
    if (!st.ok()) {
      return st.WithContext("stage " + std::to_string(stage_index) + ": connecting to stage " +
                            std::to_string(stage_index + 1) + " at " + next_address);
    }
  }
  PublishPlane(std::move(tcp));
  return OkStatus();
}

void WorkerActor::Impl::PollLinks() {
#ifdef XCPIPE_HAVE_CUDA
  if (!links_pending || !joining) return;
  StatusOr<bool> joined = joining->PollReady();
  if (joined.ok() && *joined) {
    links_pending = false;
    spdlog::info("stage {}: NCCL links joined in {} ms", stage_index,
                 std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - assign_started).count());
    PublishPlane(std::move(joining));
    state = State::kReady;
    return SendStageReady();
  }
  const auto now = Clock::now();
  Status failure;
  if (!joined.ok()) {
    failure = joined.status();
  } else if (now >= join_deadline) {
    std::string which;
    if (!joining->previous_joined()) which = "from stage " + std::to_string(stage_index - 1);
    if (!joining->next_joined())
      which += (which.empty() ? "to stage " : " and to stage ") + std::to_string(stage_index + 1);
    failure = DeadlineExceededError(
        "the NCCL link " + which + " did not join within " + std::to_string(kNcclJoinTimeout.count()) +
        " s of the assignment (the neighbour never started its communicator, or cannot reach the NCCL bootstrap "
        "at the coordinator); links aborted");
  } else {
    if (now >= next_join_progress) {
      // Alive and working on the assignment: keeps the coordinator from re-sending it.
      const uint64_t bytes = model ? model->weight_bytes() : 0;
      capnp::MallocMessageBuilder m;
      auto p = m.initRoot<proto::Envelope>().initLoadProgress();
      p.setEpoch(epoch);
      p.setStageIndex(stage_index);
      p.setBytesDone(bytes);
      p.setBytesTotal(bytes);
      SendEnvelope(m);
      next_join_progress = now + kJoinProgressInterval;
    }
    return;
  }
  links_pending = false;
  state = State::kIdle;
  RetirePlane();
  SendError(failure.WithContext("stage " + std::to_string(stage_index) + ": NCCL data plane"), 0);
#endif
}

void WorkerActor::Impl::StopDataPlane() {
  stop.store(true);
  if (receiver) receiver->Close();  // wakes a receive waiting on the listener
  plane_cv.notify_all();
  RetirePlane();
  if (receiver_thread.joinable()) receiver_thread.join();
  if (plane_reaper.joinable()) plane_reaper.join();
}

void WorkerActor::Impl::PublishPlane(std::shared_ptr<transport::DataPlane> ready) {
  {
    std::lock_guard<std::mutex> lock(plane_mutex);
    plane = std::move(ready);
  }
  plane_cv.notify_all();
}

// Unpublishes the plane and closes it. The abort and release run on plane_reaper:
// ncclCommAbort waits for NCCL's own threads and may take longer than a heartbeat interval.
// Received tensors that still hold the old plane's buffers keep them.
//
// The receiver thread may still be inside the old plane's Receive on the shared listener (up to
// kReceivePoll). A TCP plane handing it a frame of the next TCP plane is harmless (the frame is
// delivered all the same), but an NCCL plane refuses in-band frames and headers of other epochs,
// and a TCP plane refuses headers without bytes: a frame meant for the next plane would be lost.
// So when either side is NCCL, this waits (bounded) until the receiver thread is out.
void WorkerActor::Impl::RetirePlane(bool next_is_nccl) {
  std::shared_ptr<transport::DataPlane> old;
  {
    std::lock_guard<std::mutex> lock(plane_mutex);
    old.swap(plane);
  }
  plane_cv.notify_all();
  std::shared_ptr<transport::DataPlane> old_joining;
#ifdef XCPIPE_HAVE_CUDA
  old_joining = std::move(joining);
  joining.reset();
#endif
  links_pending = false;
  if (!old && !old_joining) return;
  const transport::DataPlane* retired = old.get();
  const bool wait_for_receiver = old && (next_is_nccl || old->kind() == "nccl");
  if (old) {
    bytes_sent_before += old->stats().bytes_sent;
    old->Close();
  }
  if (old_joining) old_joining->Close();
  if (plane_reaper.joinable()) plane_reaper.join();
  plane_reaper = std::thread([old = std::move(old), old_joining = std::move(old_joining)]() mutable {
#ifdef XCPIPE_HAVE_CUDA
    for (auto* p : {old.get(), old_joining.get()}) {
      if (auto* nccl = dynamic_cast<transport::NcclDataPlane*>(p)) nccl->Abort("replaced by a new assignment");
    }
#endif
    old.reset();
    old_joining.reset();
  });
  if (!wait_for_receiver) return;
  std::unique_lock<std::mutex> lock(plane_mutex);
  if (!plane_cv.wait_for(lock, kReceiverLeaveTimeout, [&] { return receiving_on != retired; })) {
    spdlog::warn("the data-plane receiver is still in the previous plane after {} ms; going on",
                 std::chrono::duration_cast<std::chrono::milliseconds>(kReceiverLeaveTimeout).count());
  }
}

void WorkerActor::Impl::OnAdmit(proto::AdmitSequence::Reader a) {
  const uint64_t id = a.getSequenceId();
  if (!model) return SendError(FailedPreconditionError("no stage assigned"), id);
  if (Status st = model->ReserveSequence(id, a.getMaxTokens()); !st.ok()) return SendError(st, id);
  if (a.getPrefixRows() > 0) {
    if (Status st = model->CopyPrefix(a.getPrefixSequenceId(), id, a.getPrefixRows()); !st.ok()) {
      // Without the copy its steps would read an empty cache: keep it unadmitted, so they wait
      // and end as Aborted (the coordinator re-plans) instead of computing wrong tokens.
      model->ReleaseSequence(id);
      return SendError(AbortedError(st.message()), id);
    }
  }
  if (is_last()) {
    auto s = a.getSampling();
    model::SamplingParams p;
    p.greedy = s.getGreedy();
    p.temperature = s.getTemperature();
    p.top_k = s.getTopK();
    p.top_p = s.getTopP();
    p.repetition_penalty = s.getRepetitionPenalty();
    p.seed = s.getSeed();
    p.min_new_tokens = s.getMinNewTokens();
    for (int64_t t : a.getStopIds()) p.stop_ids.push_back(t);
    if (Status st = model::ValidateSamplingParams(p); !st.ok()) {
      model->ReleaseSequence(id);
      return SendError(st, id);
    }
    SequenceState state{model::Sampler(p, a.getGeneratedTokens()), {}, a.getPrefillRows()};
    for (int64_t t : a.getPenaltyContext()) state.context.push_back(t);
    sequences.insert_or_assign(id, std::move(state));
  }
  RetryDeferred();
}

bool WorkerActor::Impl::Admitted(const std::vector<model::Segment>& segments) const {
  for (const auto& s : segments)
    if (!model->HoldsSequence(s.sequence_id)) return false;
  return true;
}

void WorkerActor::Impl::OnForward(proto::Forward::Reader f) {
  if (!model || stage_index != 0) {
    return SendError(FailedPreconditionError("forward sent to a worker that is not the first stage"), f.getMicroBatchId());
  }
  PendingStep step;
  step.epoch = f.getEpoch();
  step.micro_batch = f.getMicroBatchId();
  step.step = f.getStep();
  step.want_logits = f.getWantLogits();
  int64_t rows = 0;
  for (auto s : f.getSegments()) {
    step.segments.push_back({s.getSequenceId(), s.getRows(), s.getStartPos()});
    rows += s.getRows();
  }
  auto ids = f.getTokenIds();
  auto mask = f.getImMask();
  if (static_cast<int64_t>(ids.size()) != rows || static_cast<int64_t>(mask.size()) != rows) {
    return SendError(InvalidArgumentError("forward carries " + std::to_string(ids.size()) + " token ids and " +
                                          std::to_string(mask.size()) + " mask bytes for " + std::to_string(rows) +
                                          " rows"), step.micro_batch);
  }
  std::vector<int64_t> id_values;
  id_values.reserve(ids.size());
  for (int64_t id : ids) id_values.push_back(id);
  step.input.token_ids = at::tensor(id_values, at::kLong);
  step.input.im_mask = at::from_blob(const_cast<uint8_t*>(mask.begin()), {rows}, at::kByte).to(at::kBool);
  std::optional<ComputeScope> encoding;  // the vision tower can take a while: watched like a step
  if (f.getImages().size() > 0) encoding.emplace(*this, step.micro_batch, rows);
  std::vector<at::Tensor> encoded;
  for (auto img : f.getImages()) {
    const uint64_t n = uint64_t{img.getChannels()} * img.getHeight() * img.getWidth();
    auto px = img.getPixels();
    if (px.size() != n * sizeof(float) || n == 0) {
      return SendError(InvalidArgumentError("image of " + std::to_string(px.size()) + " bytes does not match its " +
                                            std::to_string(img.getChannels()) + "x" + std::to_string(img.getHeight()) +
                                            "x" + std::to_string(img.getWidth()) + " float32 shape"), step.micro_batch);
    }
    at::Tensor pixels = at::empty({img.getChannels(), img.getHeight(), img.getWidth()}, at::kFloat);
    std::memcpy(pixels.data_ptr(), px.begin(), px.size());
    auto embeds = model->EncodeImage({pixels, img.getGridH(), img.getGridW()});
    if (!embeds.ok()) return SendError(embeds.status().WithContext("encoding an image"), step.micro_batch);
    encoded.push_back(*embeds);
  }
  encoding.reset();
  std::vector<int64_t> slots;  // image rows (-1 ids) of each segment in this step
  size_t row = 0;
  for (const auto& seg : step.segments) {
    int64_t n = 0;
    for (int64_t r = 0; r < seg.rows; ++r, ++row) n += id_values[row] < 0;
    slots.push_back(n);
  }
  auto taken = TakeImageRows(step.segments, slots, std::move(encoded));
  if (!taken.ok()) return SendError(taken.status(), step.micro_batch);
  step.input.image_embeds = std::move(taken).value();
  step.input.segments = step.segments;
  if (!Admitted(step.segments)) {
    deferred.push_back(std::move(step));
    return;
  }
  RunStep(step);
}

StatusOr<std::vector<at::Tensor>> WorkerActor::Impl::TakeImageRows(const std::vector<model::Segment>& segments,
                                                                    const std::vector<int64_t>& slots,
                                                                    std::vector<at::Tensor> images) {
  std::vector<at::Tensor> out;
  size_t next_image = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    int64_t need = slots[i];
    if (need == 0) continue;
    ImageRows& have = image_rows[segments[i].sequence_id];
    while (need > 0) {
      if (have.pending.empty()) {
        if (next_image == images.size()) {
          image_rows.erase(segments[i].sequence_id);
          return InvalidArgumentError("sequence " + std::to_string(segments[i].sequence_id) + " has " +
                                      std::to_string(need) + " image rows in this step that no image given covers");
        }
        have.pending.push_back(std::move(images[next_image++]));
        have.used = 0;
      }
      const at::Tensor& front = have.pending.front();
      const int64_t n = std::min(need, front.size(0) - have.used);
      out.push_back(front.narrow(0, have.used, n));
      have.used += n;
      need -= n;
      if (have.used == front.size(0)) {
        have.pending.erase(have.pending.begin());
        have.used = 0;
      }
    }
    if (have.pending.empty()) image_rows.erase(segments[i].sequence_id);
  }
  if (next_image != images.size()) {
    return InvalidArgumentError(std::to_string(images.size() - next_image) +
                                " image(s) in this step fall on no image rows of it");
  }
  return out;
}

void WorkerActor::Impl::OnData(transport::StageMessage message) {
  if (!model) return;
  if (message.epoch != epoch) {
    spdlog::warn("dropping activations of epoch {} (current {})", message.epoch, epoch);
    return;
  }
  PendingStep step;
  step.epoch = message.epoch;
  step.micro_batch = message.micro_batch_id;
  step.step = message.step;
  for (const auto& s : message.segments) step.segments.push_back({s.sequence_id, s.rows, s.start_pos});
  const auto* hidden = message.Find("hidden");
  const auto* mask = message.Find("im_mask");
  if (hidden == nullptr || mask == nullptr || hidden->shape().size() != 2) {
    return SendError(InvalidArgumentError("activation message lacks hidden [N, H] or im_mask [N]"), step.micro_batch);
  }
  // Over NCCL to a stage on the device the hidden states arrive in device memory (a pooled
  // buffer `keep_alive` holds): computed on in place.
  auto where = at::TensorOptions().dtype(ToTorch(hidden->dtype()));
  if (hidden->location() == transport::MemoryLocation::kCudaDevice) where = where.device(at::kCUDA, hidden->device());
  step.input.hidden = at::from_blob(const_cast<std::byte*>(hidden->bytes().data()), hidden->shape(), where);
  step.input.im_mask = at::from_blob(const_cast<std::byte*>(mask->bytes().data()), mask->shape(), at::kByte)
                           .to(at::kBool);
  if (const auto* micros = message.Find("stage_micros")) {
    auto v = micros->as<int64_t>();
    step.stage_micros.assign(v.begin(), v.end());
  }
  if (const auto* flags = message.Find("flags")) step.want_logits = !flags->bytes().empty() && flags->bytes()[0] != std::byte{0};
  step.input.segments = step.segments;
  step.keep_alive = std::move(message);
  if (!Admitted(step.segments)) {
    deferred.push_back(std::move(step));
    return;
  }
  RunStep(step);
}

void WorkerActor::Impl::RetryDeferred() {
  for (size_t n = deferred.size(); n > 0 && !deferred.empty(); --n) {
    PendingStep step = std::move(deferred.front());
    deferred.pop_front();
    if (Admitted(step.segments)) {
      RunStep(step);
    } else if (Clock::now() - step.arrived > kDeferLimit) {
      // An admission that never arrived (lost on the way): the pipeline's state is out of step,
      // which the coordinator repairs by re-planning and replaying (Aborted), not by failing users.
      SendError(AbortedError("step of micro-batch " + std::to_string(step.micro_batch) +
                             " names sequences this stage never admitted"), step.micro_batch);
    } else {
      deferred.push_back(std::move(step));
    }
  }
}

void WorkerActor::Impl::RunStep(PendingStep& step) {
  if (state == State::kReady) state = State::kServing;
  if (opt.step_delay.count() > 0) std::this_thread::sleep_for(opt.step_delay);
  int64_t rows = 0;
  for (const auto& seg : step.segments) rows += seg.rows;
  watchdog_epoch.store(epoch);
  watchdog_steps.store(steps_completed);
  ComputeScope computing(*this, step.micro_batch, rows);
  if (opt.hang_at_step > 0 && steps_completed + 1 == opt.hang_at_step) {
    // Fault injection: a compute loop that never returns (a stuck kernel). Nothing else of
    // this actor runs, heartbeats included, exactly as when a real step wedges.
    spdlog::warn("fault injection: hanging inside step {} of micro-batch {}", opt.hang_at_step, step.micro_batch);
    while (true) std::this_thread::sleep_for(std::chrono::hours(1));
  }
  const auto started = Clock::now();
  step.input.all_logits = false;
  auto out = model->Forward(step.input);
  if (!out.ok()) return SendError(out.status().WithContext("stage " + std::to_string(stage_index)), step.micro_batch);
  const auto finished = Clock::now();
  step_times.Record(started, finished);
  step.stage_micros.push_back(std::chrono::duration_cast<std::chrono::microseconds>(finished - started).count());
  ++steps_completed;
  if (is_last()) {
    // Sampling runs on the host: the logits rows are the one tensor that leaves the device here
    // (the copy waits for the step's kernels, so the step's inputs are no longer read after it).
    const at::Tensor logits = out->logits.to(at::kCPU);
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<proto::Envelope>().initStepResult();
    r.setEpoch(step.epoch);
    r.setMicroBatchId(step.micro_batch);
    r.setStep(step.step);
    auto ids = r.initSequenceIds(step.segments.size());
    auto tokens = r.initTokens(step.segments.size());
    for (size_t i = 0; i < step.segments.size(); ++i) {
      const uint64_t id = step.segments[i].sequence_id;
      auto it = sequences.find(id);
      ids.set(i, id);
      const auto& seg = step.segments[i];
      if (it == sequences.end() || seg.start_pos + seg.rows < it->second.prefill_rows) {
        tokens.set(i, -1);  // gone, or a piece of a long prompt: no token, no draw, no penalty row
        continue;
      }
      const int64_t token = it->second.sampler.Next(logits[static_cast<int64_t>(i)], it->second.context);
      it->second.context.push_back(token);
      tokens.set(i, token);
    }
    if (step.want_logits) {
      at::Tensor l = logits.contiguous();
      r.setLogits(kj::arrayPtr(static_cast<const kj::byte*>(l.data_ptr()), static_cast<size_t>(l.numel()) * 4));
    }
    auto micros = r.initStageMicros(step.stage_micros.size());
    for (size_t i = 0; i < step.stage_micros.size(); ++i) micros.set(i, static_cast<uint32_t>(step.stage_micros[i]));
    SendEnvelope(m);
    return;
  }
  // The hidden states go device to device over NCCL; TCP frames are host bytes, so a stage on a
  // CUDA device copies them to the host here, at the send, and the next stage moves them back
  // to its device when its step starts. The small side tensors travel as host data.
  const bool device_send = !out->hidden.is_cpu() && data_plane == "nccl";
  at::Tensor hidden = device_send ? out->hidden.contiguous() : out->hidden.to(at::kCPU).contiguous();
  at::Tensor mask = step.input.im_mask.to(at::kCPU).to(at::kByte).contiguous();
  at::Tensor micros = at::tensor(step.stage_micros, at::kLong);
  uint8_t flag = step.want_logits ? 1 : 0;
  transport::StageMessage msg;
  msg.epoch = step.epoch;
  msg.micro_batch_id = step.micro_batch;
  msg.step = step.step;
  for (const auto& s : step.segments) msg.segments.push_back({s.sequence_id, s.rows, s.start_pos});
  const auto hidden_dtype = hidden.scalar_type() == at::kBFloat16 ? transport::DType::kBF16
                            : hidden.scalar_type() == at::kHalf   ? transport::DType::kF16
                                                                  : transport::DType::kF32;
  auto f1 = device_send ? transport::TensorFrame::Share("hidden", hidden_dtype, hidden.sizes().vec(), BytesOf(hidden),
                                                         std::make_shared<at::Tensor>(hidden),
                                                         transport::MemoryLocation::kCudaDevice,
                                                         static_cast<int>(hidden.device().index()))
                        : transport::TensorFrame::Borrow("hidden", hidden_dtype, hidden.sizes().vec(), BytesOf(hidden));
  auto f2 = transport::TensorFrame::Borrow("im_mask", transport::DType::kU8, mask.sizes().vec(), BytesOf(mask));
  auto f3 = transport::TensorFrame::Borrow("stage_micros", transport::DType::kI64, micros.sizes().vec(), BytesOf(micros));
  auto f4 = transport::TensorFrame::Borrow("flags", transport::DType::kU8, {1},
                                           {reinterpret_cast<const std::byte*>(&flag), 1});
  if (!f1.ok() || !f2.ok() || !f3.ok() || !f4.ok()) {
    return SendError(InternalError("cannot frame activations"), step.micro_batch);
  }
  msg.tensors = {*f1, *f2, *f3, *f4};
  if (!plane) {
    return SendError(FailedPreconditionError("stage " + std::to_string(stage_index) + " has no data plane to stage " +
                                             std::to_string(stage_index + 1) + " yet"),
                     step.micro_batch);
  }
  // TCP writes the frame; NCCL sends the header over TCP and the tensors with ncclSend: the
  // hidden states in place on the device, after the step's kernels (the event below), the host
  // side tensors through a staging copy. Send returns once the device has sent them, so the
  // step's inputs and outputs are no longer read when this step ends.
#ifdef XCPIPE_HAVE_CUDA
  if (device_send) {
    auto event = cuda::RecordComputeDone(static_cast<int>(hidden.device().index()));
    if (!event.ok()) return SendError(AbortedError(event.status().message()), step.micro_batch);
    msg.ready_event = std::move(event).value();
  }
#endif
  if (Status st = plane->Send(msg, transport::DeadlineAfter(kSendDeadline)); !st.ok()) {
    SendError(AbortedError(st.message()).WithContext("hand-off to stage " + std::to_string(stage_index + 1)),
              step.micro_batch);
  }
}

void WorkerActor::Impl::Dispatch(const proto::Envelope::Reader& env) {
  last_from_coordinator = Clock::now();
  switch (env.which()) {
    case proto::Envelope::WELCOME: {
      auto w = env.getWelcome();
      if (!welcomed) spdlog::info("registered with the coordinator (epoch {})", w.getEpoch());
      welcomed = true;
      id_refused_since.reset();
      epoch = std::max(epoch, w.getEpoch());
      return;
    }
    case proto::Envelope::HEARTBEAT: return;
    case proto::Envelope::ERROR: {
      auto e = env.getError();
      spdlog::error("coordinator: {}: {}", StatusCodeName(wire::FromWire(e.getCode())), e.getMessage().cStr());
      if (!welcomed && e.getCode() == proto::ErrorCode::FAILED_PRECONDITION) exit_code = 1;  // refused hello
      if (!welcomed && e.getCode() == proto::ErrorCode::ALREADY_EXISTS) {
        const auto now = Clock::now();
        if (!id_refused_since) id_refused_since = now;
        if (now - *id_refused_since > 2 * control::ControlTimings::kHeartbeatTimeout) {
          spdlog::error("worker id '{}' is held by another live worker; giving up. Give each worker its own "
                        "--worker-id", opt.worker_id);
          exit_code = kExitInvalidInput;
        }
      }
      return;
    }
    case proto::Envelope::ASSIGN_STAGE: return OnAssign(env.getAssignStage());
    case proto::Envelope::ADMIT_SEQUENCE: return OnAdmit(env.getAdmitSequence());
    case proto::Envelope::RELEASE_SEQUENCES: {
      for (uint64_t id : env.getReleaseSequences().getSequenceIds()) {
        if (model) model->ReleaseSequence(id);
        sequences.erase(id);
        image_rows.erase(id);
      }
      return;
    }
    case proto::Envelope::FORWARD: {
      auto f = env.getForward();
      if (f.getEpoch() != epoch) {
        return SendError(FailedPreconditionError("forward of epoch " + std::to_string(f.getEpoch()) +
                                                 " refused: current epoch is " + std::to_string(epoch)),
                         f.getMicroBatchId());
      }
      return OnForward(f);
    }
    case proto::Envelope::DRAIN:
      spdlog::info("draining: {}", env.getDrain().getReason().cStr());
      state = State::kDraining;
      return;
    case proto::Envelope::SHUTDOWN:
      spdlog::info("shutdown: {}", env.getShutdown().getReason().cStr());
      exit_code = 0;
      return;
    case proto::Envelope::HELLO:
    case proto::Envelope::LOAD_PROGRESS:
    case proto::Envelope::STAGE_READY:
    case proto::Envelope::STEP_RESULT:
    case proto::Envelope::SUBMIT:
    case proto::Envelope::TOKEN_EVENT:
    case proto::Envelope::STATUS_REQUEST:
    case proto::Envelope::STATUS_REPLY:
      SendError(InvalidArgumentError("a worker does not accept this message"), 0);
      return;
  }
  SendError(InvalidArgumentError("unknown message type"), 0);
}

void WorkerActor::Impl::ReceiverLoop() {
  while (!stop.load()) {
    std::shared_ptr<transport::DataPlane> current;
    {
      std::unique_lock<std::mutex> lock(plane_mutex);
      // No plane (between assignments): wait for one; wake now and then to see a stop.
      if (!plane) plane_cv.wait_for(lock, kReceivePoll, [this] { return plane != nullptr || stop.load(); });
      current = plane;
      receiving_on = current.get();
    }
    if (!current) continue;
    auto message = current->Receive(transport::DeadlineAfter(kReceivePoll));
    {
      std::lock_guard<std::mutex> lock(plane_mutex);
      receiving_on = nullptr;
    }
    plane_cv.notify_all();
    if (!message.ok()) {
      switch (message.status().code()) {
        case StatusCode::kDeadlineExceeded:  // nothing arrived
        case StatusCode::kCancelled:         // the plane was retired (or the process stops)
          break;
        case StatusCode::kFailedPrecondition: {  // the first stage: nothing comes in on this plane
          std::unique_lock<std::mutex> lock(plane_mutex);
          plane_cv.wait_for(lock, kReceivePoll, [&] { return plane != current || stop.load(); });
          break;
        }
        default:
          spdlog::warn("data plane ({}): {}", current->kind(), message.status().ToString());
      }
      continue;
    }
#ifdef XCPIPE_HAVE_CUDA
    // NCCL delivers the tensors into device memory. A stage computing on that device keeps the
    // hidden states there; the side tensors (mask, timings, flags) are read on the host. A
    // stage computing on the host needs everything copied.
    const bool hidden_stays = CudaOrdinal(opt.device.device).has_value();
    if (Status st = transport::CopyTensorsToHost(*message, hidden_stays ? "hidden" : ""); !st.ok()) {
      spdlog::warn("data plane: {}", st.ToString());
      continue;
    }
#endif
    {
      std::lock_guard<std::mutex> lock(queue_mutex);
      queue.push_back(std::move(*message));
    }
    try {
      wake_tx.send(zmq::buffer("w", 1), zmq::send_flags::dontwait);
    } catch (const zmq::error_t&) {
    }
  }
}

WorkerActor::WorkerActor(WorkerOptions options) : impl_(std::make_unique<Impl>()) { impl_->opt = std::move(options); }

WorkerActor::~WorkerActor() { impl_->StopDataPlane(); }

int WorkerActor::Run() {
  Impl& s = *impl_;
  std::signal(SIGTERM, OnTerminate);
  std::signal(SIGINT, OnTerminate);
  auto listen = transport::TcpReceiverLink::Listen({s.opt.data_host, s.opt.data_port}, {});
  if (!listen.ok()) {
    spdlog::error("data plane: {}", listen.status().ToString());
    return ExitCodeFor(listen.status());
  }
  s.receiver = std::move(listen).value();
  s.routing_id = control::ProcessRoutingId(s.opt.worker_id);
  auto socket = control::ControlSocket::ConnectDealer(s.context, s.opt.coordinator, s.routing_id, s.opt.curve);
  if (!socket.ok()) {
    spdlog::error("control plane: {}", socket.status().ToString());
    return ExitCodeFor(socket.status());
  }
  s.control = std::move(socket).value();
  s.watchdog = std::make_unique<ComputeWatchdog>(s.context, s.opt.coordinator, s.routing_id, s.opt.curve,
                                                 s.watchdog_epoch, s.watchdog_steps);
  const std::string wake_endpoint = "inproc://wake";
  s.wake_rx.bind(wake_endpoint);
  s.wake_tx.connect(wake_endpoint);
  s.receiver_thread = std::thread([&s] { s.ReceiverLoop(); });
  spdlog::info("worker {} on {} ({}), data plane {}, {} threads", s.opt.worker_id, s.opt.device.device,
               s.opt.device.device_name, s.receiver->local_endpoint().ToString(), s.opt.threads);

  std::optional<State> reported;  // last state handed to on_state_change
  while (s.exit_code < 0) {
    const auto now = Clock::now();
    if (g_stop_requested.load() && s.state != State::kDraining) {
      spdlog::info("signal received: draining");
      s.state = State::kDraining;
    }
    if (s.opt.on_state_change && reported != s.state) {
      reported = s.state;
      s.opt.on_state_change(StateName(s.state));
    }
    if (s.opt.on_tick) s.opt.on_tick();
    if (s.state == State::kDraining && s.deferred.empty()) {
      s.exit_code = 0;
      break;
    }
    // Say hello until welcomed, and again when the coordinator has gone silent (it may have
    // restarted): the weights stay loaded.
    const bool silent = now - s.last_from_coordinator > control::ControlTimings::kHeartbeatTimeout;
    if ((!s.welcomed || silent) && now - s.last_hello > 1s) {
      if (silent && s.welcomed) spdlog::warn("coordinator silent; saying hello again");
      s.welcomed = false;
      s.SendHello();
    }
    if (s.welcomed && now >= s.next_heartbeat) {
      s.SendHeartbeat();
      s.next_heartbeat = now + control::ControlTimings::kHeartbeatInterval;
    }
    zmq::pollitem_t items[] = {{s.control->socket().handle(), 0, ZMQ_POLLIN, 0}, {s.wake_rx.handle(), 0, ZMQ_POLLIN, 0}};
    try {
      // Short waits while steps are deferred or links join (both are polled, not signalled).
      zmq::poll(items, 2, std::chrono::milliseconds(s.deferred.empty() && !s.links_pending ? 100 : 10));
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) spdlog::warn("poll: {}", e.what());
      continue;
    }
    // Control first: an admission may be what a queued activation waits for.
    while (true) {
      auto in = s.control->Receive(0ms);
      if (!in.ok()) {
        spdlog::warn("control: {}", in.status().ToString());
        continue;
      }
      if (!in->has_value()) break;
      try {
        s.Dispatch((*in)->message->envelope());
      } catch (const std::exception& e) {
        s.SendError(InternalError(std::string("worker dispatch: ") + e.what()), 0);
      }
    }
    if (items[1].revents & ZMQ_POLLIN) {
      zmq::message_t drop;
      while (s.wake_rx.recv(drop, zmq::recv_flags::dontwait)) {
      }
    }
    std::deque<transport::StageMessage> batch;
    {
      std::lock_guard<std::mutex> lock(s.queue_mutex);
      batch.swap(s.queue);
    }
    for (auto& message : batch) {
      try {
        s.OnData(std::move(message));
      } catch (const std::exception& e) {
        s.SendError(InternalError(std::string("worker step: ") + e.what()), 0);
      }
    }
    s.RetryDeferred();
    s.PollLinks();
  }
  spdlog::info("worker {} exiting ({})", s.opt.worker_id, StateName(s.state));
  s.StopDataPlane();
  return s.exit_code;
}

}  // namespace xcpipe::worker
