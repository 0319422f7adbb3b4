#include "xcpipe/worker/worker_actor.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "xcpipe/base/exit_codes.h"
#include "xcpipe/checkpoint/model_spec.h"
#include "xcpipe/control/socket.h"
#include "xcpipe/model/sampling.h"
#include "xcpipe/model/stage_model.h"
#include "xcpipe/transport/tcp_link.h"
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

std::span<const std::byte> BytesOf(const at::Tensor& t) {
  return {static_cast<const std::byte*>(t.data_ptr()), static_cast<size_t>(t.numel()) * t.element_size()};
}

}  // namespace

struct WorkerActor::Impl {
  WorkerOptions opt;
  zmq::context_t context;
  std::unique_ptr<control::ControlSocket> control;
  zmq::socket_t wake_rx{context, zmq::socket_type::pair};
  zmq::socket_t wake_tx{context, zmq::socket_type::pair};
  std::unique_ptr<transport::TcpReceiverLink> receiver;
  std::unique_ptr<transport::TcpSenderLink> sender;
  std::thread receiver_thread;
  std::atomic<bool> stop{false};
  std::mutex queue_mutex;
  std::deque<transport::StageMessage> queue;

  State state = State::kIdle;
  uint64_t epoch = 0;
  bool welcomed = false;
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
  uint32_t stage_index = 0, stage_count = 0;
  model::BlockRange range;
  std::string model_path, dtype, overrides;
  std::unique_ptr<model::StageModel> model;
  std::map<uint64_t, SequenceState> sequences;
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
  auto planes = caps.initDataPlanes(BuiltWithCuda() ? 2 : 1);
  planes.set(0, "tcp");
  if (BuiltWithCuda()) planes.set(1, "nccl");
  caps.setDataAddress(opt.data_advertise.empty() ? receiver->local_endpoint().ToString() : opt.data_advertise);
  caps.setThreads(static_cast<uint32_t>(opt.threads));
  caps.setBuildVersion("0.1.0");
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
  const MemoryReading memory = ReadMemory(opt.device.device);
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
  r.setBytesSent(bytes_sent_before + (sender ? sender->counters().bytes.load(std::memory_order_relaxed) : 0));
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
  const model::BlockRange new_range{a.getBlockBegin(), a.getBlockEnd()};
  const std::string new_path = a.getModelPath().cStr(), new_dtype = a.getDtype().cStr();
  const std::string new_overrides = a.getSpecOverrides().cStr();
  const bool same_blocks = model && new_range.begin == range.begin && new_range.end == range.end &&
                           new_path == model_path && new_dtype == dtype && new_overrides == overrides;
  epoch = a.getEpoch();
  stage_index = a.getStageIndex();
  stage_count = a.getStageCount();
  sequences.clear();
  deferred.clear();
  state = State::kLoading;
  if (opt.on_state_change) opt.on_state_change(StateName(state));  // the loop sees only the end state
  const auto started = Clock::now();
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
    so.dtype = dtype == "bf16" ? model::ComputeDType::kBF16 : model::ComputeDType::kF32;
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
  if (sender) bytes_sent_before += sender->counters().bytes.load(std::memory_order_relaxed);
  sender.reset();
  const std::string next = a.getNextDataAddress().cStr();
  if (!is_last()) {
    auto endpoint = transport::TcpEndpoint::Parse(next);
    if (!endpoint.ok()) {
      state = State::kIdle;
      return SendError(endpoint.status().WithContext("nextDataAddress"), 0);
    }
    auto link = transport::TcpSenderLink::Create(*endpoint, {});
    if (link.ok()) {
      // Bounded well under the heartbeat timeout: a dead neighbour must not make this stage
      // look dead; the coordinator plans again and the dead one drops out.
      Status st = (*link)->Connect(transport::DeadlineAfter(1500ms));
      if (!st.ok()) {
        state = State::kIdle;
        return SendError(st.WithContext("connecting to stage " + std::to_string(stage_index + 1) + " at " + next), 0);
      }
      sender = std::move(link).value();
    } else {
      state = State::kIdle;
      return SendError(link.status(), 0);
    }
  }
  state = State::kReady;
  capnp::MallocMessageBuilder m;
  auto r = m.initRoot<proto::Envelope>().initStageReady();
  r.setEpoch(epoch);
  r.setStageIndex(stage_index);
  r.setWeightBytes(model->weight_bytes());
  r.setKvBytesPerToken(model->kv_bytes_per_token());
  r.setResidentBytes(ResidentBytes());
  r.setWeightsKept(same_blocks);
  r.setLoadMs(static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count()));
  SendEnvelope(m);
  spdlog::info("stage {}/{} ready: blocks [{}, {}), {} MiB of weights, {}", stage_index, stage_count, range.begin,
               range.end, model->weight_bytes() >> 20, same_blocks ? "kept from the previous epoch" : "loaded");
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
    if (Status st = model::ValidateSamplingParams(p); !st.ok()) {
      model->ReleaseSequence(id);
      return SendError(st, id);
    }
    SequenceState state{model::Sampler(p), {}};
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
    step.input.image_embeds.push_back(*embeds);
  }
  encoding.reset();
  step.input.segments = step.segments;
  if (!Admitted(step.segments)) {
    deferred.push_back(std::move(step));
    return;
  }
  RunStep(step);
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
  step.input.hidden = at::from_blob(const_cast<std::byte*>(hidden->bytes().data()), hidden->shape(),
                                    ToTorch(hidden->dtype()));
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
      if (it == sequences.end()) {
        tokens.set(i, -1);
        continue;
      }
      const int64_t token = it->second.sampler.Next(out->logits[static_cast<int64_t>(i)], it->second.context);
      it->second.context.push_back(token);
      tokens.set(i, token);
    }
    if (step.want_logits) {
      at::Tensor l = out->logits.contiguous();
      r.setLogits(kj::arrayPtr(static_cast<const kj::byte*>(l.data_ptr()), static_cast<size_t>(l.numel()) * 4));
    }
    auto micros = r.initStageMicros(step.stage_micros.size());
    for (size_t i = 0; i < step.stage_micros.size(); ++i) micros.set(i, static_cast<uint32_t>(step.stage_micros[i]));
    SendEnvelope(m);
    return;
  }
  at::Tensor hidden = out->hidden.contiguous();
  at::Tensor mask = step.input.im_mask.to(at::kByte).contiguous();
  at::Tensor micros = at::tensor(step.stage_micros, at::kLong);
  uint8_t flag = step.want_logits ? 1 : 0;
  transport::StageMessage msg;
  msg.epoch = step.epoch;
  msg.micro_batch_id = step.micro_batch;
  msg.step = step.step;
  for (const auto& s : step.segments) msg.segments.push_back({s.sequence_id, s.rows, s.start_pos});
  const auto hidden_dtype = hidden.scalar_type() == at::kBFloat16 ? transport::DType::kBF16 : transport::DType::kF32;
  auto f1 = transport::TensorFrame::Borrow("hidden", hidden_dtype, hidden.sizes().vec(), BytesOf(hidden));
  auto f2 = transport::TensorFrame::Borrow("im_mask", transport::DType::kU8, mask.sizes().vec(), BytesOf(mask));
  auto f3 = transport::TensorFrame::Borrow("stage_micros", transport::DType::kI64, micros.sizes().vec(), BytesOf(micros));
  auto f4 = transport::TensorFrame::Borrow("flags", transport::DType::kU8, {1},
                                           {reinterpret_cast<const std::byte*>(&flag), 1});
  if (!f1.ok() || !f2.ok() || !f3.ok() || !f4.ok()) {
    return SendError(InternalError("cannot frame activations"), step.micro_batch);
  }
  msg.tensors = {*f1, *f2, *f3, *f4};
  if (Status st = sender->Send(msg, transport::DeadlineAfter(kSendDeadline)); !st.ok()) {
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
      epoch = std::max(epoch, w.getEpoch());
      return;
    }
    case proto::Envelope::HEARTBEAT: return;
    case proto::Envelope::ERROR: {
      auto e = env.getError();
      spdlog::error("coordinator: {}: {}", StatusCodeName(wire::FromWire(e.getCode())), e.getMessage().cStr());
      if (!welcomed && e.getCode() == proto::ErrorCode::FAILED_PRECONDITION) exit_code = 1;  // refused hello
      return;
    }
    case proto::Envelope::ASSIGN_STAGE: return OnAssign(env.getAssignStage());
    case proto::Envelope::ADMIT_SEQUENCE: return OnAdmit(env.getAdmitSequence());
    case proto::Envelope::RELEASE_SEQUENCES: {
      for (uint64_t id : env.getReleaseSequences().getSequenceIds()) {
        if (model) model->ReleaseSequence(id);
        sequences.erase(id);
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
    auto frame = receiver->Receive(transport::DeadlineAfter(200ms));
    if (!frame.ok()) {
      if (frame.status().code() == StatusCode::kCancelled) return;
      if (frame.status().code() != StatusCode::kDeadlineExceeded) {
        spdlog::warn("data plane: {}", frame.status().ToString());
      }
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(queue_mutex);
      queue.push_back(std::move(frame->message));
    }
    try {
      wake_tx.send(zmq::buffer("w", 1), zmq::send_flags::dontwait);
    } catch (const zmq::error_t&) {
    }
  }
}

WorkerActor::WorkerActor(WorkerOptions options) : impl_(std::make_unique<Impl>()) { impl_->opt = std::move(options); }

WorkerActor::~WorkerActor() {
  if (impl_->receiver) impl_->receiver->Close();
  impl_->stop.store(true);
  if (impl_->receiver_thread.joinable()) impl_->receiver_thread.join();
}

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
  auto socket = control::ControlSocket::ConnectDealer(s.context, s.opt.coordinator, s.opt.worker_id, s.opt.curve);
  if (!socket.ok()) {
    spdlog::error("control plane: {}", socket.status().ToString());
    return ExitCodeFor(socket.status());
  }
  s.control = std::move(socket).value();
  s.watchdog = std::make_unique<ComputeWatchdog>(s.context, s.opt.coordinator, s.opt.worker_id, s.opt.curve,
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
      zmq::poll(items, 2, std::chrono::milliseconds(s.deferred.empty() ? 100 : 10));
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
  }
  spdlog::info("worker {} exiting ({})", s.opt.worker_id, StateName(s.state));
  s.receiver->Close();
  s.stop.store(true);
  if (s.receiver_thread.joinable()) s.receiver_thread.join();
  return s.exit_code;
}

}  // namespace xcpipe::worker
