#include "xcpipe/worker/worker_actor.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "encode_thread.h"
#include "stage_links.h"
#include "step_executor.h"
#include "xcpipe/base/exit_codes.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/control/socket.h"
#include "xcpipe/control/transport.h"
#include "xcpipe/model/stage_model.h"
#include "xcpipe/transport/tcp_frame_reader.h"
#include "xcpipe/worker/compute_watchdog.h"
#include "xcpipe/worker/resource_sampler.h"

namespace xcpipe::worker {
namespace {

using namespace std::chrono_literals;

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

// How long an activation may wait for its sequences' admission before it is refused.
constexpr auto kDeferLimit = 10s;
enum class State { kIdle, kLoading, kReady, kServing, kDraining };
const char* StateName(State s) {
  switch (s) {
    case State::kIdle:
      return "idle";
    case State::kLoading:
      return "loading";
    case State::kReady:
      return "ready";
    case State::kServing:
      return "serving";
    case State::kDraining:
      return "draining";
  }
  return "?";
}

// The dtype of the checkpoint's floating tensors (the first one found).
checkpoint::DType FirstFloatingDType(const std::vector<checkpoint::TensorInfo>& tensors) {
  for (const auto& t : tensors) {
    if (t.dtype == checkpoint::DType::kF32 || t.dtype == checkpoint::DType::kBF16 ||
        t.dtype == checkpoint::DType::kF16) {
      return t.dtype;
    }
  }
  return checkpoint::DType::kF32;
}

// The tiles an image's encode runs the tower over: the HD grid and its global view (1 and 1
// for fixed-size models): the unit a compute watchdog times an encode by.
int64_t EncodeTiles(proto::ImageTensor::Reader img) {
  return int64_t{std::max<uint32_t>(1, img.getGridH())} * std::max<uint32_t>(1, img.getGridW()) + 1;
}

// One preprocessed image from the wire (ImageTensor), its size checked against its shape.
StatusOr<model::ImageInput> ImageFromWire(proto::ImageTensor::Reader img) {
  const uint64_t n = uint64_t{img.getChannels()} * img.getHeight() * img.getWidth();
  auto px = img.getPixels();
  if (px.size() != n * sizeof(float) || n == 0) {
    return InvalidArgumentError("image of " + std::to_string(px.size()) + " bytes does not match its " +
                                std::to_string(img.getChannels()) + "x" + std::to_string(img.getHeight()) + "x" +
                                std::to_string(img.getWidth()) + " float32 shape");
  }
  at::Tensor pixels = at::empty({img.getChannels(), img.getHeight(), img.getWidth()}, at::kFloat);
  std::memcpy(pixels.data_ptr(), px.begin(), px.size());
  return model::ImageInput{pixels, img.getGridH(), img.getGridW()};
}

}  // namespace

struct WorkerActor::Impl {
  explicit Impl(WorkerOptions options)
      : opt(std::move(options)),
        clock(*opt.clock),
        links(std::make_unique<StageLinks>(opt.device.device, clock)),
        executor(StepExecutorOptions{&clock}) {}

  WorkerOptions opt;
  Clock& clock;  // every time this actor reads or waits for (not its socket polls)
  zmq::context_t context;
  std::unique_ptr<control::ControlTransport> own_control;  // the DEALER, unless opt.transport
  control::ControlTransport* control = nullptr;
  zmq::socket_t wake_rx{context, zmq::socket_type::pair};
  zmq::socket_t wake_tx{context, zmq::socket_type::pair};  // used by the links' receiver thread only
  // The data plane: the listener announced in hello, the links of the current assignment and
  // the receiver thread, which wakes this actor through wake_tx.
  std::unique_ptr<StageLinks> links;
  // The stage model, the sequences it holds and the last stage's token selection.
  StepExecutor executor;
  // The image link (AssignStage.vision). On every worker, the inbox: embeddings that vision
  // workers send arrive there whole, one data-plane frame per ZeroMQ message, checked like any
  // frame. On a vision worker, the outbox, connected to the embed stage's inbox.
  zmq::socket_t image_in{context, zmq::socket_type::pull};
  std::string image_address;  // "host:port" of image_in (hello)
  std::optional<zmq::socket_t> image_out;
  transport::HostBufferPool image_pool{size_t{256} << 20};
  bool vision_role = false;  // the assignment makes this a vision worker
  uint64_t images_encoded = 0;

  State state = State::kIdle;
  uint64_t epoch = 0;
  bool welcomed = false;
  // This process's control-plane identity (ProcessRoutingId of the worker id).
  std::string routing_id;
  // Since when the coordinator has refused this worker's id as held by another live process:
  // the holder may be this worker's previous process whose connection has not closed yet, so
  // the hello is repeated until the holder would have missed its heartbeats, then given up.
  std::optional<Clock::time_point> id_refused_since;
  Clock::time_point last_from_coordinator = clock.now();
  Clock::time_point next_heartbeat = clock.now();
  Clock::time_point last_hello = clock.now() - std::chrono::hours(1);
  uint64_t heartbeat_seq = 0;
  // Monitoring (sent in heartbeats): the KV budget of the assignment.
  uint64_t kv_budget = 0;

  // Assignment.
  uint64_t assigned_epoch = 0;  // epoch of the last assignment taken (a repeat is recognised)
  bool weights_kept = false;    // its blocks were already loaded
  Clock::time_point assign_started;
  uint32_t stage_index = 0, stage_count = 0;
  model::BlockRange range;
  std::string model_path, dtype, overrides;
  std::deque<PendingStep> deferred;
  int exit_code = -1;
  std::atomic<bool> stop_requested{false};  // RequestStop(): drain
  // The compute watchdog (its own thread and socket) and what it reads of this actor.
  std::atomic<uint64_t> watchdog_epoch{0}, watchdog_steps{0};
  uint64_t computing_micro_batch = 0;                           // named in heartbeats while a step runs
  uint64_t decoder_layer_micros = 0, decoder_layers_timed = 0;  // speed figure for rebalancing
  // While alive, the actor is computing `micro_batch`: heartbeats name it and the compute
  // watchdog watches it for progress.
  struct ComputeScope {
    Impl& impl;
    ComputeScope(Impl& i, uint64_t micro_batch, int64_t rows,
                 ComputeWatchdog::Work work = ComputeWatchdog::Work::kLayers)
        : impl(i) {
      impl.computing_micro_batch = micro_batch;
      if (impl.watchdog) impl.watchdog->BeginStep(rows, micro_batch, work);
    }
    ~ComputeScope() {
      if (impl.watchdog) impl.watchdog->EndStep();
      impl.computing_micro_batch = 0;
    }
    ComputeScope(const ComputeScope&) = delete;
    ComputeScope& operator=(const ComputeScope&) = delete;
  };
  std::unique_ptr<ComputeWatchdog> watchdog;
  // A vision worker encodes on a thread of its own at opt.encode_nice (made at its first image):
  // the model's between-layers callback then runs there, counts its progress in
  // `encode_layers`, and leaves the heartbeats to the actor thread, which owns the sockets.
  std::unique_ptr<EncodeThread> encode_thread;
  std::thread::id actor_thread;
  std::atomic<uint64_t> encode_layers{0};

  model::StageModel* stage_model() const { return executor.model(); }
  bool is_last() const { return stage_index + 1 == stage_count; }

  void SendEnvelope(capnp::MallocMessageBuilder& m) {
    if (auto st = control->Send(m, {}, std::chrono::milliseconds(1000)); !st.ok()) {
      spdlog::warn("control send failed: {}", st.ToString());
    }
  }
  // An error about a step (micro_batch), or about nothing in particular (0).
  void SendError(const Status& status, uint64_t micro_batch) {
    capnp::MallocMessageBuilder m;
    wire::SetError(m.initRoot<proto::Envelope>(), status).setMicroBatchId(micro_batch);
    SendEnvelope(m);
  }
  // An error about one sequence's admission.
  void SendSequenceError(const Status& status, uint64_t sequence) {
    capnp::MallocMessageBuilder m;
    wire::SetError(m.initRoot<proto::Envelope>(), status).setSequenceId(sequence);
    SendEnvelope(m);
  }
  void SendHello();
  void SendHeartbeat();
  void FillResources(proto::ResourceSample::Builder r);
  void Dispatch(const proto::Envelope::Reader& env);
  void OnAssign(proto::AssignStage::Reader a);
  // Advances joining NCCL links: stageReady once joined, an error naming the stage when they
  // fail or the join deadline passes.
  void PollLinks();
  void SendLoadProgress(uint64_t done, uint64_t total);
  void SendStageReady();
  void OnAdmit(proto::AdmitSequence::Reader a);
  void OnForward(proto::Forward::Reader f);
  // Vision worker: encode one image, hand its rows to the embed stage, answer imageEncoded.
  void OnEncodeImage(proto::EncodeImage::Reader e);
  // The embed stage: one message of the image inbox.
  void OnImageMessage(const zmq::message_t& message);
  // Stage 0: places the rows of the images a step names once they have all arrived; false while
  // some are still on the way (the step waits among the deferred ones).
  StatusOr<bool> PlaceEncodedImages(PendingStep& step);
  void SendImageError(const Status& status, uint64_t image_id) {
    capnp::MallocMessageBuilder m;
    wire::SetError(m.initRoot<proto::Envelope>(), status).setImageId(image_id);
    SendEnvelope(m);
  }
  void OnData(transport::StageMessage message);
  void RunStep(PendingStep& step);
  void RetryDeferred();
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
  caps.setDataAddress(opt.data_advertise.empty() ? links->local_endpoint().ToString() : opt.data_advertise);
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
  caps.setImageAddress(image_address);
  SendEnvelope(m);
  last_hello = clock.now();
}

void WorkerActor::Impl::SendHeartbeat() {
  capnp::MallocMessageBuilder m;
  auto hb = m.initRoot<proto::Envelope>().initHeartbeat();
  hb.setSequence(++heartbeat_seq);
  hb.setSentAtUnixMs(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count()));
  hb.setEpoch(epoch);
  hb.setStepsCompleted(executor.steps_completed());
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
  const model::StageModel* model = executor.model();
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
  const StepTimeSummary steps = executor.step_times().Summarize(clock.now());
  r.setStepP50Micros(steps.p50_micros);
  r.setStepP99Micros(steps.p99_micros);
  r.setStepsInWindow(steps.steps);
  r.setWindowMs(steps.window_ms);
  r.setIdleFraction(steps.idle_fraction);
  r.setBusyMicrosTotal(executor.step_times().busy_micros_total());
  r.setDecoderLayerMicrosTotal(decoder_layer_micros);
  r.setDecoderLayersTimed(decoder_layers_timed);
  r.setBytesSent(links->bytes_sent());
  r.setQueuedSteps(static_cast<uint32_t>(deferred.size() + links->received_count()));
}

void WorkerActor::Impl::OnAssign(proto::AssignStage::Reader a) {
  if (a.getEpoch() < epoch) {
    SendError(FailedPreconditionError("assignment of epoch " + std::to_string(a.getEpoch()) +
                                      " is older than this worker's epoch " + std::to_string(epoch)),
              0);
    return;
  }
  // A repeat of the assignment in hand (the coordinator re-sends one it heard nothing about).
  // NCCL unique ids are single-use: links joining or joined are kept, not rebuilt.
  if (a.getEpoch() == assigned_epoch && links->kind() == "nccl" && a.getDataPlane() == "nccl" &&
      a.getStageIndex() == stage_index && stage_model()) {
    if (links->links_pending()) return;  // stageReady follows once they have joined
    if (state == State::kReady || state == State::kServing) return SendStageReady();
  }
  const model::BlockRange new_range{a.getBlockBegin(), a.getBlockEnd()};
  const std::string new_path = a.getModelPath().cStr(), new_dtype = a.getDtype().cStr();
  const std::string new_overrides = a.getSpecOverrides().cStr();
  const bool same_blocks = stage_model() && new_range.begin == range.begin && new_range.end == range.end &&
                           new_path == model_path && new_dtype == dtype && new_overrides == overrides;
  epoch = a.getEpoch();
  vision_role = a.getVision();
  stage_index = a.getStageIndex();
  // A vision worker is a pipeline of its own, one stage long: no links, no KV, no steps.
  stage_count = vision_role ? 1 : a.getStageCount();
  executor.Assign(stage_index, stage_count);
  deferred.clear();
  state = State::kLoading;
  if (opt.on_state_change) opt.on_state_change(StateName(state));  // the loop sees only the end state
  const auto started = clock.now();
  assign_started = started;
  assigned_epoch = epoch;
  // The previous plan's links go first: NCCL links of this one start now, before the load.
  LinkAssignment links_wanted;
  links_wanted.epoch = epoch;
  links_wanted.stage_index = stage_index;
  links_wanted.stage_count = stage_count;
  links_wanted.data_plane = vision_role ? "tcp" : a.getDataPlane().cStr();
  links_wanted.next_address = vision_role ? "" : a.getNextDataAddress().cStr();
  links_wanted.previous_nccl_id.assign(a.getPreviousNcclId().begin(), a.getPreviousNcclId().end());
  links_wanted.next_nccl_id.assign(a.getNextNcclId().begin(), a.getNextNcclId().end());
  if (Status st = links->Start(links_wanted); !st.ok()) {
    state = State::kIdle;
    return SendError(st.WithContext("stage " + std::to_string(stage_index)), 0);
  }
  if (!same_blocks) {
    executor.SetModel(nullptr);
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
      const checkpoint::DType stored = FirstFloatingDType(described->tensors.tensors);
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
        clock.SleepFor(std::chrono::microseconds(extra));
        micros += extra;
      }
      decoder_layer_micros += static_cast<uint64_t>(micros);
      ++decoder_layers_timed;
    };
    so.between_layers = [this] {
      if (watchdog) watchdog->Progress();
      if (std::this_thread::get_id() != actor_thread) {  // an encode on the encode thread
        encode_layers.fetch_add(1, std::memory_order_relaxed);
        return;
      }
      if (welcomed && clock.now() >= next_heartbeat) {
        SendHeartbeat();
        next_heartbeat = clock.now() + control::ControlTimings::kHeartbeatInterval;
      }
    };
    so.on_progress = [this](uint64_t done, uint64_t total) {
      if (opt.on_tick) opt.on_tick();  // loading a large stage must not trip a service watchdog
      // Links joining meanwhile: post their warm-up as soon as they can, so a neighbour that
      // finished loading first is not kept waiting for this load (failures show in PollLinks).
      links->AdvanceJoin();
      SendLoadProgress(done, total);
    };
    auto loaded = model::StageModel::Load(model_path, spec, range, so);
    if (!loaded.ok()) {
      state = State::kIdle;
      return SendError(loaded.status().WithContext("stage " + std::to_string(stage_index)), 0);
    }
    executor.SetModel(std::move(loaded).value());
  } else {
    stage_model()->SetKvBudget(a.getKvBudgetBytes());
  }
  stage_model()->ReleaseAllSequences();
  kv_budget = a.getKvBudgetBytes();
  executor.step_times().Reset(clock.now());
  weights_kept = same_blocks;
  if (Status st = links->Finish(); !st.ok()) {
    state = State::kIdle;
    links->Retire();
    return SendError(st, 0);
  }
  if (links->links_pending()) return PollLinks();  // stageReady once they have joined
  image_out.reset();
  if (vision_role) {
    // The embed stage's inbox: ZeroMQ connects (and reconnects) in the background; a send waits
    // at most a second for room, and a message to an inbox that went away is dropped with
    // the socket when the next assignment replaces it (linger 0).
    try {
      image_out.emplace(context, zmq::socket_type::push);
      image_out->set(zmq::sockopt::linger, 0);
      image_out->set(zmq::sockopt::sndtimeo, 1000);
      image_out->set(zmq::sockopt::sndhwm, 16);
      image_out->connect("tcp://" + std::string(a.getNextDataAddress().cStr()));
    } catch (const zmq::error_t& e) {
      image_out.reset();
      state = State::kIdle;
      return SendError(
          InvalidArgumentError(std::string("vision worker: cannot connect to the embed stage's image inbox '") +
                               a.getNextDataAddress().cStr() + "': " + e.what()),
          0);
    }
  }
  state = State::kReady;
  SendStageReady();
}

void WorkerActor::Impl::SendStageReady() {
  const model::StageModel* model = executor.model();
  capnp::MallocMessageBuilder m;
  auto r = m.initRoot<proto::Envelope>().initStageReady();
  // The epoch of the assignment this answers: a welcome may have raised `epoch` since (a
  // restarted coordinator), and a stage loaded for an older plan must not pass for the new one.
  r.setEpoch(assigned_epoch);
  r.setStageIndex(stage_index);
  r.setWeightBytes(model->weight_bytes());
  r.setKvBytesPerToken(model->kv_bytes_per_token());
  r.setResidentBytes(ResidentBytes());
  r.setWeightsKept(weights_kept);
  r.setDtype(model::ComputeDTypeName(model->dtype()));
  r.setDevice(model->device());
  r.setVision(vision_role);
  r.setLoadMs(static_cast<uint32_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(clock.now() - assign_started).count()));
  SendEnvelope(m);
  spdlog::info("{} {}/{} ready: blocks [{}, {}), {} MiB of weights, {}, on {} in {} ({} kernels), {} data plane",
               vision_role ? "vision worker" : "stage", stage_index, stage_count, range.begin, range.end,
               model->weight_bytes() >> 20, weights_kept ? "kept from the previous epoch" : "loaded", model->device(),
               model::ComputeDTypeName(model->dtype()), model->cpu_fast_paths() ? "CPU fast" : "generic",
               links->kind());
}

void WorkerActor::Impl::SendLoadProgress(uint64_t done, uint64_t total) {
  capnp::MallocMessageBuilder m;
  auto p = m.initRoot<proto::Envelope>().initLoadProgress();
  p.setEpoch(assigned_epoch);
  p.setStageIndex(stage_index);
  p.setBytesDone(done);
  p.setBytesTotal(total);
  SendEnvelope(m);
}

void WorkerActor::Impl::PollLinks() {
  JoinPoll poll = links->PollJoin();
  switch (poll.kind) {
    case JoinPoll::Kind::kNone:
    case JoinPoll::Kind::kWaiting:
      return;
    case JoinPoll::Kind::kProgress: {
      // Alive and working on the assignment: keeps the coordinator from re-sending it.
      const uint64_t bytes = stage_model() ? stage_model()->weight_bytes() : 0;
      return SendLoadProgress(bytes, bytes);
    }
    case JoinPoll::Kind::kJoined:
      spdlog::info("stage {}: NCCL links joined in {} ms", stage_index,
                   std::chrono::duration_cast<std::chrono::milliseconds>(clock.now() - assign_started).count());
      state = State::kReady;
      return SendStageReady();
    case JoinPoll::Kind::kFailed:
      state = State::kIdle;
      links->Retire();
      return SendError(poll.failure.WithContext("stage " + std::to_string(stage_index) + ": NCCL data plane"), 0);
  }
}

void WorkerActor::Impl::OnAdmit(proto::AdmitSequence::Reader a) {
  // An admission of an older plan (overtaken by this plan's assignment, which freed every
  // sequence) would hold KV room that no release ever names again: dropped, as its forwards are.
  if (a.getEpoch() != epoch) {
    spdlog::info("dropping the admission of sequence {} of epoch {} (current {})", a.getSequenceId(), a.getEpoch(),
                 epoch);
    return;
  }
  Admission admission;
  admission.sequence_id = a.getSequenceId();
  admission.max_tokens = a.getMaxTokens();
  admission.prefix_sequence_id = a.getPrefixSequenceId();
  admission.prefix_rows = a.getPrefixRows();
  auto s = a.getSampling();
  model::SamplingParams& p = admission.sampling;
  p.greedy = s.getGreedy();
  p.temperature = s.getTemperature();
  p.top_k = s.getTopK();
  p.top_p = s.getTopP();
  p.repetition_penalty = s.getRepetitionPenalty();
  p.seed = s.getSeed();
  p.min_new_tokens = s.getMinNewTokens();
  for (int64_t t : a.getStopIds()) p.stop_ids.push_back(t);
  admission.generated_tokens = a.getGeneratedTokens();
  admission.prefill_rows = a.getPrefillRows();
  for (int64_t t : a.getPenaltyContext()) admission.penalty_context.push_back(t);
  for (uint64_t id : a.getBeamSequenceIds()) admission.beam_sequence_ids.push_back(id);
  admission.beam_candidates = a.getBeamCandidates();
  if (Status st = executor.Admit(admission); !st.ok()) return SendSequenceError(st, admission.sequence_id);
  RetryDeferred();
}

void WorkerActor::Impl::OnForward(proto::Forward::Reader f) {
  if (!stage_model() || stage_index != 0) {
    return SendError(FailedPreconditionError("forward sent to a worker that is not the first stage"),
                     f.getMicroBatchId());
  }
  PendingStep step;
  step.arrived = clock.now();
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
    return SendError(
        InvalidArgumentError("forward carries " + std::to_string(ids.size()) + " token ids and " +
                             std::to_string(mask.size()) + " mask bytes for " + std::to_string(rows) + " rows"),
        step.micro_batch);
  }
  std::vector<int64_t> id_values;
  id_values.reserve(ids.size());
  for (int64_t id : ids) id_values.push_back(id);
  if (f.getBeamParents().size() > 0 || f.getBeamScores().size() > 0) {
    if (f.getBeamParents().size() != step.segments.size() || f.getBeamScores().size() != step.segments.size()) {
      return SendError(
          InvalidArgumentError("forward carries " + std::to_string(f.getBeamParents().size()) + " beam parents and " +
                               std::to_string(f.getBeamScores().size()) + " beam scores for " +
                               std::to_string(step.segments.size()) + " segments; expected one each or none"),
          step.micro_batch);
    }
    // Each segment's last row is the token it feeds: the last stage's penalty contexts follow it.
    int64_t end = 0;
    for (size_t i = 0; i < step.segments.size(); ++i) {
      end += step.segments[i].rows;
      step.beam_parents.push_back(f.getBeamParents()[i]);
      step.beam_scores.push_back(f.getBeamScores()[i]);
      step.beam_tokens.push_back(end > 0 ? id_values[static_cast<size_t>(end - 1)] : -1);
    }
  }
  step.input.token_ids = at::tensor(id_values, at::kLong);
  step.input.im_mask = at::from_blob(const_cast<uint8_t*>(mask.begin()), {rows}, at::kByte).to(at::kBool);
  std::vector<int64_t> slots;  // image rows (-1 ids) of each segment in this step
  {
    size_t row = 0;
    for (const auto& seg : step.segments) {
      int64_t n = 0;
      for (int64_t r = 0; r < seg.rows; ++r, ++row) n += id_values[row] < 0;
      slots.push_back(n);
    }
  }
  step.input.segments = step.segments;
  if (f.getImageIds().size() > 0) {
    // Encoded by vision workers: the rows come through the image inbox (perhaps still on the way).
    if (f.getImages().size() > 0) {
      return SendError(InvalidArgumentError("forward carries both images and imageIds; expected one or the other"),
                       step.micro_batch);
    }
    for (uint64_t id : f.getImageIds()) step.image_ids.push_back(id);
    step.image_slots = slots;
    auto placed = PlaceEncodedImages(step);
    if (!placed.ok()) return SendError(placed.status(), step.micro_batch);
    if (!*placed || !executor.Admitted(step.segments)) {
      deferred.push_back(std::move(step));
      return;
    }
    return RunStep(step);
  }
  std::optional<ComputeScope> encoding;  // the vision tower can take a while: watched like a step
  if (f.getImages().size() > 0) {
    int64_t tiles = 0;
    for (auto img : f.getImages()) tiles += EncodeTiles(img);
    encoding.emplace(*this, step.micro_batch, tiles, ComputeWatchdog::Work::kEncode);
  }
  std::vector<at::Tensor> encoded;
  for (auto img : f.getImages()) {
    auto input = ImageFromWire(img);
    if (!input.ok()) return SendError(input.status(), step.micro_batch);
    auto embeds = executor.EncodeImage(*input);
    if (!embeds.ok()) return SendError(embeds.status().WithContext("encoding an image"), step.micro_batch);
    encoded.push_back(*embeds);
  }
  encoding.reset();
  auto taken = executor.TakeImageRows(step.segments, slots, std::move(encoded));
  if (!taken.ok()) return SendError(taken.status(), step.micro_batch);
  step.input.image_embeds = std::move(taken).value();
  if (!executor.Admitted(step.segments)) {
    deferred.push_back(std::move(step));
    return;
  }
  RunStep(step);
}

void WorkerActor::Impl::OnData(transport::StageMessage message) {
  if (!stage_model()) return;
  if (message.epoch != epoch) {
    spdlog::warn("dropping activations of epoch {} (current {})", message.epoch, epoch);
    return;
  }
  const uint64_t micro_batch = message.micro_batch_id;
  auto step = executor.FromActivations(std::move(message));
  if (!step.ok()) return SendError(step.status(), micro_batch);
  if (!executor.Admitted(step->segments)) {
    deferred.push_back(std::move(step).value());
    return;
  }
  RunStep(*step);
}

StatusOr<bool> WorkerActor::Impl::PlaceEncodedImages(PendingStep& step) {
  if (step.image_ids.empty()) return true;
  if (!executor.HasEncodedImages(step.image_ids)) return false;
  XCPIPE_ASSIGN_OR_RETURN(std::vector<at::Tensor> rows, executor.TakeEncodedImages(step.image_ids));
  XCPIPE_ASSIGN_OR_RETURN(step.input.image_embeds,
                          executor.TakeImageRows(step.segments, step.image_slots, std::move(rows)));
  step.image_ids.clear();
  return true;
}

void WorkerActor::Impl::OnImageMessage(const zmq::message_t& message) {
  transport::FrameReaderOptions options;
  auto frame =
      transport::DecodeFrameBytes({static_cast<const std::byte*>(message.data()), message.size()}, options, image_pool);
  if (!frame.ok()) {
    spdlog::warn("image inbox: refused a message: {}", frame.status().ToString());
    return;
  }
  if (frame->message.epoch != epoch || !stage_model() || stage_index != 0 || vision_role) {
    spdlog::info("image inbox: dropping image {} of epoch {} (current {}{})", frame->message.micro_batch_id,
                 frame->message.epoch, epoch, stage_index != 0 || vision_role ? ", not the embed stage" : "");
    return;
  }
  if (Status st = executor.StoreEncodedImage(frame->message); !st.ok()) {
    spdlog::warn("image inbox: image {}: {}", frame->message.micro_batch_id, st.ToString());
  }
}

void WorkerActor::Impl::OnEncodeImage(proto::EncodeImage::Reader e) {
  const uint64_t image_id = e.getImageId();
  if (e.getEpoch() != epoch || !vision_role || !stage_model() || !image_out) {
    return SendImageError(
        FailedPreconditionError(
            "encodeImage of epoch " + std::to_string(e.getEpoch()) + " refused: this worker is " +
            (vision_role ? "a vision worker of epoch " + std::to_string(epoch) : std::string("not a vision worker"))),
        image_id);
  }
  auto img = e.getImage();
  auto input = ImageFromWire(img);
  if (!input.ok()) return SendImageError(input.status(), image_id);
  if (state == State::kReady) state = State::kServing;
  if (opt.step_delay.count() > 0) clock.SleepFor(opt.step_delay);
  const auto started = clock.now();
  if (!encode_thread) {
    encode_thread = std::make_unique<EncodeThread>(opt.encode_nice);
    if (!encode_thread->nice_status().ok()) {
      spdlog::warn("vision worker: encodes keep the stages' priority: {}", encode_thread->nice_status().ToString());
    } else {
      spdlog::info("vision worker: encodes run on a thread of their own at nice {}", encode_thread->nice());
    }
  }
  StatusOr<at::Tensor> embeds = [&] {
    watchdog_epoch.store(epoch);
    watchdog_steps.store(executor.steps_completed());
    ComputeScope encoding(*this, image_id, EncodeTiles(img), ComputeWatchdog::Work::kEncode);  // watched like a step
    // Fault injection: a slower vision tower, heartbeating as the real one does between layers.
    for (auto left = opt.encode_delay; left.count() > 0; left -= std::chrono::milliseconds(100)) {
      clock.SleepFor(std::min(left, std::chrono::milliseconds(100)));
      if (watchdog) watchdog->Progress();
      if (welcomed && clock.now() >= next_heartbeat) {
        SendHeartbeat();
        next_heartbeat = clock.now() + control::ControlTimings::kHeartbeatInterval;
      }
    }
    StatusOr<at::Tensor> out = InternalError("the encode did not run");
    // While the tower runs, the actor heartbeats only when a layer was done since its last
    // heartbeat: a tower stuck in one layer goes as silent as a stuck step does.
    // The encode thread runs the model only: the executor's timings and every socket stay on
    // this thread, which reads them for the heartbeats.
    uint64_t layers_seen = encode_layers.load(std::memory_order_relaxed);
    const auto tower_started = clock.now();
    encode_thread->Run([&] { out = executor.EncodeImage(*input); },
                       [&] {
                         const uint64_t layers = encode_layers.load(std::memory_order_relaxed);
                         if (welcomed && layers != layers_seen && clock.now() >= next_heartbeat) {
                           layers_seen = layers;
                           SendHeartbeat();
                           next_heartbeat = clock.now() + control::ControlTimings::kHeartbeatInterval;
                         }
                       });
    executor.RecordEncode(tower_started, clock.now());
    return out;
  }();
  if (!embeds.ok())
    return SendImageError(embeds.status().WithContext("encoding image " + std::to_string(image_id)), image_id);
  const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(clock.now() - started).count();
  at::Tensor rows = embeds->to(at::kCPU).contiguous();
  transport::StageMessage frame;
  frame.epoch = epoch;
  frame.micro_batch_id = image_id;
  frame.segments = {{e.getSequenceId(), rows.size(0), 0}};
  const auto dtype = rows.scalar_type() == at::kBFloat16 ? transport::DType::kBF16
                     : rows.scalar_type() == at::kHalf   ? transport::DType::kF16
                                                         : transport::DType::kF32;
  auto tensor = transport::TensorFrame::Borrow(
      "image_embeds", dtype, rows.sizes().vec(),
      {static_cast<const std::byte*>(rows.data_ptr()), static_cast<size_t>(rows.numel()) * rows.element_size()});
  if (!tensor.ok()) return SendImageError(tensor.status(), image_id);
  frame.tensors = {*tensor};
  auto bytes = transport::EncodeFrameBytes(frame, transport::MessageLimits{});
  if (!bytes.ok()) return SendImageError(bytes.status(), image_id);
  // The frame goes out without another copy: the message owns the buffer and frees it once sent.
  auto* owned = new std::vector<std::byte>(std::move(bytes).value());
  zmq::message_t message(
      owned->data(), owned->size(), [](void*, void* hint) { delete static_cast<std::vector<std::byte>*>(hint); },
      owned);
  const uint64_t frame_bytes = message.size();
  try {
    if (!image_out->send(message, zmq::send_flags::none)) {
      return SendImageError(UnavailableError("the embed stage's image inbox took nothing for 1 s"), image_id);
    }
  } catch (const zmq::error_t& err) {
    return SendImageError(UnavailableError(std::string("sending to the embed stage's image inbox: ") + err.what()),
                          image_id);
  }
  ++images_encoded;
  capnp::MallocMessageBuilder m;
  auto done = m.initRoot<proto::Envelope>().initImageEncoded();
  done.setEpoch(epoch);
  done.setImageId(image_id);
  done.setRows(static_cast<uint32_t>(rows.size(0)));
  done.setEncodeMicros(static_cast<uint64_t>(micros));
  done.setBytes(frame_bytes);
  SendEnvelope(m);
}

void WorkerActor::Impl::RetryDeferred() {
  for (size_t n = deferred.size(); n > 0 && !deferred.empty(); --n) {
    PendingStep step = std::move(deferred.front());
    deferred.pop_front();
    auto placed = PlaceEncodedImages(step);
    if (!placed.ok()) {
      SendError(placed.status(), step.micro_batch);
    } else if (*placed && executor.Admitted(step.segments)) {
      RunStep(step);
    } else if (!*placed && clock.now() - step.arrived > kDeferLimit) {
      // The coordinator sends a step only after the vision worker said the rows were handed
      // over: rows that never came were lost on the way. A fault: re-planned and replayed.
      SendError(AbortedError("step of micro-batch " + std::to_string(step.micro_batch) + " names " +
                             std::to_string(step.image_ids.size()) +
                             " image(s) whose rows never arrived from the vision workers"),
                step.micro_batch);
    } else if (clock.now() - step.arrived > kDeferLimit) {
      // An admission that never arrived (lost on the way): the pipeline's state is out of step,
      // which the coordinator repairs by re-planning and replaying (Aborted), not by failing users.
      SendError(AbortedError("step of micro-batch " + std::to_string(step.micro_batch) +
                             " names sequences this stage never admitted"),
                step.micro_batch);
    } else {
      deferred.push_back(std::move(step));
    }
  }
}

void WorkerActor::Impl::RunStep(PendingStep& step) {
  if (state == State::kReady) state = State::kServing;
  if (opt.step_delay.count() > 0) clock.SleepFor(opt.step_delay);
  int64_t rows = 0;
  for (const auto& seg : step.segments) rows += seg.rows;
  watchdog_epoch.store(epoch);
  watchdog_steps.store(executor.steps_completed());
  ComputeScope computing(*this, step.micro_batch, rows);
  if (opt.hang_at_step > 0 && executor.steps_completed() + 1 == opt.hang_at_step) {
    // Fault injection: a compute loop that never returns (a stuck kernel). Nothing else of
    // this actor runs, heartbeats included, exactly as when a real step wedges.
    spdlog::warn("fault injection: hanging inside step {} of micro-batch {}", opt.hang_at_step, step.micro_batch);
    while (true) std::this_thread::sleep_for(std::chrono::hours(1));
  }
  auto out = executor.Run(step);
  if (!out.ok()) return SendError(out.status(), step.micro_batch);
  if (is_last()) {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<proto::Envelope>().initStepResult();
    r.setEpoch(step.epoch);
    r.setMicroBatchId(step.micro_batch);
    r.setStep(step.step);
    auto ids = r.initSequenceIds(step.segments.size());
    auto tokens = r.initTokens(step.segments.size());
    for (size_t i = 0; i < step.segments.size(); ++i) {
      ids.set(i, step.segments[i].sequence_id);
      tokens.set(i, out->tokens[i]);
    }
    if (out->logits.defined()) {
      const at::Tensor& l = out->logits;
      r.setLogits(kj::arrayPtr(static_cast<const kj::byte*>(l.data_ptr()), static_cast<size_t>(l.numel()) * 4));
    }
    if (!out->candidates.empty()) {
      size_t total = 0;
      for (const auto& row : out->candidates) total += row.size();
      auto counts = r.initCandidateCounts(step.segments.size());
      auto tokens_out = r.initCandidateTokens(total);
      auto totals = r.initCandidateTotals(total);
      size_t k = 0;
      for (size_t i = 0; i < step.segments.size(); ++i) {
        const auto& row = i < out->candidates.size() ? out->candidates[i] : std::vector<model::BeamCandidate>{};
        counts.set(i, static_cast<uint32_t>(row.size()));
        for (const auto& c : row) {
          tokens_out.set(k, c.token);
          totals.set(k++, c.total);
        }
      }
    }
    auto micros = r.initStageMicros(out->stage_micros.size());
    for (size_t i = 0; i < out->stage_micros.size(); ++i) micros.set(i, static_cast<uint32_t>(out->stage_micros[i]));
    SendEnvelope(m);
    return;
  }
  Activations next;
  next.epoch = step.epoch;
  next.micro_batch = step.micro_batch;
  next.step = step.step;
  for (const auto& s : step.segments) next.segments.push_back({s.sequence_id, s.rows, s.start_pos});
  next.hidden = std::move(out->hidden);
  next.im_mask = step.input.im_mask;
  next.stage_micros = std::move(out->stage_micros);
  next.want_logits = step.want_logits;
  next.beam_parents = step.beam_parents;
  next.beam_tokens = step.beam_tokens;
  next.beam_scores = step.beam_scores;
  if (Status st = links->SendActivations(next); !st.ok()) SendError(st, step.micro_batch);
}

void WorkerActor::Impl::Dispatch(const proto::Envelope::Reader& env) {
  last_from_coordinator = clock.now();
  switch (env.which()) {
    case proto::Envelope::WELCOME: {
      auto w = env.getWelcome();
      if (!welcomed) spdlog::info("registered with the coordinator (epoch {})", w.getEpoch());
      welcomed = true;
      id_refused_since.reset();
      epoch = std::max(epoch, w.getEpoch());
      return;
    }
    case proto::Envelope::HEARTBEAT:
      return;
    case proto::Envelope::ERROR: {
      auto e = env.getError();
      spdlog::error("coordinator: {}: {}", StatusCodeName(wire::FromWire(e.getCode())), e.getMessage().cStr());
      if (!welcomed && e.getCode() == proto::ErrorCode::FAILED_PRECONDITION) exit_code = 1;  // refused hello
      if (!welcomed && e.getCode() == proto::ErrorCode::ALREADY_EXISTS) {
        const auto now = clock.now();
        if (!id_refused_since) id_refused_since = now;
        if (now - *id_refused_since > 2 * control::ControlTimings::kHeartbeatTimeout) {
          spdlog::error(
              "worker id '{}' is held by another live worker; giving up. Give each worker its own "
              "--worker-id",
              opt.worker_id);
          exit_code = kExitInvalidInput;
        }
      }
      return;
    }
    case proto::Envelope::ASSIGN_STAGE:
      return OnAssign(env.getAssignStage());
    case proto::Envelope::ADMIT_SEQUENCE:
      return OnAdmit(env.getAdmitSequence());
    case proto::Envelope::RELEASE_SEQUENCES: {
      for (uint64_t id : env.getReleaseSequences().getSequenceIds()) executor.Release(id);
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
    case proto::Envelope::ENCODE_IMAGE:
      return OnEncodeImage(env.getEncodeImage());
    case proto::Envelope::IMAGE_ENCODED:
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

WorkerActor::WorkerActor(WorkerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

WorkerActor::~WorkerActor() { impl_->links->Stop(); }

void WorkerActor::RequestStop() { impl_->stop_requested.store(true); }

int WorkerActor::Run() {
  Impl& s = *impl_;
  s.actor_thread = std::this_thread::get_id();
  if (Status st = s.links->Listen({s.opt.data_host, s.opt.data_port}); !st.ok()) {
    spdlog::error("data plane: {}", st.ToString());
    return ExitCodeFor(st);
  }
  try {
    s.image_in.set(zmq::sockopt::linger, 0);
    s.image_in.set(zmq::sockopt::rcvhwm, 64);
    s.image_in.set(zmq::sockopt::maxmsgsize, int64_t{1} << 31);
    s.image_in.bind("tcp://" + s.opt.data_host + ":" + std::to_string(s.opt.image_port));
    const std::string bound = s.image_in.get(zmq::sockopt::last_endpoint);  // tcp://host:port
    const std::string host = s.opt.data_advertise.empty()
                                 ? s.opt.data_host
                                 : s.opt.data_advertise.substr(0, s.opt.data_advertise.rfind(':'));
    s.image_address = host + bound.substr(bound.rfind(':'));
  } catch (const zmq::error_t& e) {
    spdlog::error("image inbox on {}:{}: {}", s.opt.data_host, s.opt.image_port, e.what());
    return kExitUnavailable;
  }
  s.routing_id = control::ProcessRoutingId(s.opt.worker_id);
  if (s.opt.transport) {
    s.control = s.opt.transport;
  } else {
    auto socket = control::ControlSocket::ConnectDealer(s.context, s.opt.coordinator, s.routing_id, s.opt.curve);
    if (!socket.ok()) {
      spdlog::error("control plane: {}", socket.status().ToString());
      return ExitCodeFor(socket.status());
    }
    s.own_control = std::make_unique<control::ZmqDealerTransport>(std::move(socket).value(), s.opt.coordinator);
    s.control = s.own_control.get();
    s.watchdog = std::make_unique<ComputeWatchdog>(s.context, s.opt.coordinator, s.routing_id, s.opt.curve,
                                                   s.watchdog_epoch, s.watchdog_steps, s.clock);
  }
  const std::string wake_endpoint = "inproc://wake";
  s.wake_rx.bind(wake_endpoint);
  s.wake_tx.connect(wake_endpoint);
  s.links->StartReceiving([&s] {
    try {
      s.wake_tx.send(zmq::buffer("w", 1), zmq::send_flags::dontwait);
    } catch (const zmq::error_t&) {
    }
  });
  spdlog::info("worker {} on {} ({}), data plane {}, {} threads", s.opt.worker_id, s.opt.device.device,
               s.opt.device.device_name, s.links->local_endpoint().ToString(), s.opt.threads);

  std::optional<State> reported;  // last state handed to on_state_change
  while (s.exit_code < 0) {
    const auto now = s.clock.now();
    if (s.stop_requested.load() && s.state != State::kDraining) {
      spdlog::info("stop requested: draining");
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
    // The wake socket first, then the control socket when the transport has one; without one
    // (an in-process transport) the wait is short and the transport is asked after it.
    zmq::socket_t* control_socket = s.control->poll_socket();
    zmq::pollitem_t items[] = {{s.wake_rx.handle(), 0, ZMQ_POLLIN, 0},
                               {s.image_in.handle(), 0, ZMQ_POLLIN, 0},
                               {control_socket ? control_socket->handle() : nullptr, 0, ZMQ_POLLIN, 0}};
    try {
      // Short waits while steps are deferred or links join (both are polled, not signalled).
      const bool idle = s.deferred.empty() && !s.links->links_pending() && control_socket;
      zmq::poll(items, control_socket ? 3 : 2, std::chrono::milliseconds(idle ? 100 : control_socket ? 10 : 2));
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) spdlog::warn("poll: {}", e.what());
      continue;
    }
    // Image rows first: a step in the control messages below may name them.
    for (zmq::message_t image; s.image_in.recv(image, zmq::recv_flags::dontwait);) {
      try {
        s.OnImageMessage(image);
      } catch (const std::exception& e) {
        spdlog::warn("image inbox: {}", e.what());
      }
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
    if (items[0].revents & ZMQ_POLLIN) {
      zmq::message_t drop;
      while (s.wake_rx.recv(drop, zmq::recv_flags::dontwait)) {
      }
    }
    for (auto& message : s.links->TakeReceived()) {
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
  s.links->Stop();
  return s.exit_code;
}

}  // namespace xcpipe::worker
