#include "stage_links.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "xcpipe/transport/tcp_data_plane.h"
#ifdef XCPIPE_HAVE_CUDA
#include "xcpipe/cuda/device.h"
#include "xcpipe/transport/nccl_data_plane.h"
#endif

namespace xcpipe::worker {
namespace {

using namespace std::chrono_literals;

// How long a hand-off to the next stage may take before the step is reported as failed. The
// receiver drains its socket on its own thread, so a live neighbour takes a hand-off at once;
// the bound stays well under the heartbeat timeout so a dead neighbour never makes this
// stage look dead too (the actor sends no heartbeats while it waits).
constexpr auto kSendDeadline = 1s;
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
[[maybe_unused]] constexpr auto kNcclJoinTimeout = 30s;
// While its links join, a stage sends loadProgress this often: the coordinator re-sends an
// assignment it hears nothing about, and a repeat must not look like silence.
[[maybe_unused]] constexpr auto kJoinProgressInterval = 1s;

std::span<const std::byte> BytesOf(const at::Tensor& t) {
  return {static_cast<const std::byte*>(t.data_ptr()), static_cast<size_t>(t.numel()) * t.element_size()};
}

}  // namespace

std::optional<int> CudaOrdinal(const std::string& device) {
  if (device.rfind("cuda:", 0) != 0 || device.size() == 5) return std::nullopt;
  int ordinal = 0;
  for (char c : device.substr(5)) {
    if (c < '0' || c > '9' || ordinal > 1000) return std::nullopt;
    ordinal = ordinal * 10 + (c - '0');
  }
  return ordinal;
}

StageLinks::StageLinks(std::string device, Clock& clock) : device_(std::move(device)), clock_(clock) {}

StageLinks::~StageLinks() { Stop(); }

Status StageLinks::Listen(const transport::TcpEndpoint& local) {
  XCPIPE_ASSIGN_OR_RETURN(receiver_, transport::TcpReceiverLink::Listen(local, {}));
  return OkStatus();
}

void StageLinks::StartReceiving(std::function<void()> on_received) {
  on_received_ = std::move(on_received);
  receiver_thread_ = std::thread([this] { ReceiverLoop(); });
}

std::deque<transport::StageMessage> StageLinks::TakeReceived() {
  std::deque<transport::StageMessage> batch;
  std::lock_guard<std::mutex> lock(queue_mutex_);
  batch.swap(queue_);
  return batch;
}

size_t StageLinks::received_count() {
  std::lock_guard<std::mutex> lock(queue_mutex_);
  return queue_.size();
}

uint64_t StageLinks::bytes_sent() const { return bytes_sent_before_ + (plane_ ? plane_->stats().bytes_sent : 0); }

Status StageLinks::Start(const LinkAssignment& a) {
  const std::string wanted = a.data_plane.empty() ? "tcp" : a.data_plane;  // older coordinators
  Retire(/*next_is_nccl=*/wanted == "nccl");
  epoch_ = a.epoch;
  stage_index_ = a.stage_index;
  stage_count_ = a.stage_count;
  next_address_ = a.next_address;
  if (wanted != "tcp" && wanted != "nccl") {
    return InvalidArgumentError("dataPlane '" + wanted + "' is unknown; expected \"tcp\" or \"nccl\"");
  }
  data_plane_ = wanted;
  if (wanted == "tcp") return OkStatus();  // connected after the load (Finish)
#ifndef XCPIPE_HAVE_CUDA
  return FailedPreconditionError(
      "assigned the NCCL data plane, but this worker was built without CUDA and NCCL "
      "(its hello offered only tcp)");
#else
  const std::optional<int> device = CudaOrdinal(device_);
  if (!device) {
    return FailedPreconditionError("assigned the NCCL data plane, but this worker computes on " + device_ +
                                   " (its hello offered only tcp); NCCL needs a CUDA device");
  }
  const bool first = stage_index_ == 0, last = is_last();
  if (first && last) return OkStatus();  // one stage: no links
  transport::NcclDataPlaneOptions o;
  o.device = *device;
  o.epoch = epoch_;
  o.shared_header_in = receiver_.get();  // headers arrive at the address announced in hello
  auto id_of = [](const std::vector<uint8_t>& bytes, const char* field) -> StatusOr<cuda::NcclUniqueIdBytes> {
    cuda::NcclUniqueIdBytes id{};
    if (bytes.size() != id.size()) {
      return InvalidArgumentError(std::string(field) + " has " + std::to_string(bytes.size()) +
                                  " bytes; an ncclUniqueId has " + std::to_string(id.size()));
    }
    std::copy(bytes.begin(), bytes.end(), id.begin());
    return id;
  };
  if (!first) {
    XCPIPE_ASSIGN_OR_RETURN(auto id, id_of(a.previous_nccl_id, "previousNcclId"));
    o.previous = transport::NcclPeerLink{id, {}};
  }
  if (!last) {
    XCPIPE_ASSIGN_OR_RETURN(auto id, id_of(a.next_nccl_id, "nextNcclId"));
    auto endpoint = transport::TcpEndpoint::Parse(a.next_address);
    if (!endpoint.ok()) return endpoint.status().WithContext("nextDataAddress");
    o.next = transport::NcclPeerLink{id, *endpoint};
  }
  auto started = transport::NcclDataPlane::Start(o);
  if (!started.ok()) return started.status().WithContext("starting the NCCL data plane on " + device_);
  joining_ = std::move(started).value();
  join_deadline_ = clock_.now() + kNcclJoinTimeout;
  return OkStatus();
#endif
}

Status StageLinks::Finish() {
  if (data_plane_ == "nccl") {
#ifdef XCPIPE_HAVE_CUDA
    links_pending_ = joining_ != nullptr;
    next_join_progress_ = clock_.now();
#endif
    return OkStatus();
  }
  const bool first = stage_index_ == 0, last = is_last();
  if (first && last) return OkStatus();  // one stage: nothing to connect
  transport::TcpDataPlaneOptions o;
  if (!first) o.shared_receiver = receiver_.get();
  if (!last) {
    auto endpoint = transport::TcpEndpoint::Parse(next_address_);
    if (!endpoint.ok()) return endpoint.status().WithContext("nextDataAddress");
    o.next = *endpoint;
  }
  XCPIPE_ASSIGN_OR_RETURN(std::unique_ptr<transport::TcpDataPlane> tcp, transport::TcpDataPlane::Create(o));
  if (!last) {
    // Bounded well under the heartbeat timeout: a dead neighbour must not make this stage
    // look dead; the coordinator plans again and the dead one drops out.
    Status st = tcp->Connect(transport::DeadlineAfter(1500ms));
    if (!st.ok()) {
      return st.WithContext("stage " + std::to_string(stage_index_) + ": connecting to stage " +
                            std::to_string(stage_index_ + 1) + " at " + next_address_);
    }
  }
  Publish(std::move(tcp));
  return OkStatus();
}

void StageLinks::AdvanceJoin() {
#ifdef XCPIPE_HAVE_CUDA
  if (joining_) (void)joining_->PollReady();
#endif
}

JoinPoll StageLinks::PollJoin() {
  JoinPoll result;
#ifdef XCPIPE_HAVE_CUDA
  if (!links_pending_ || !joining_) return result;
  StatusOr<bool> joined = joining_->PollReady();
  if (joined.ok() && *joined) {
    links_pending_ = false;
    Publish(std::move(joining_));
    result.kind = JoinPoll::Kind::kJoined;
    return result;
  }
  const auto now = clock_.now();
  if (!joined.ok()) {
    result.failure = joined.status();
  } else if (now >= join_deadline_) {
    std::string which;
    if (!joining_->previous_joined()) which = "from stage " + std::to_string(stage_index_ - 1);
    if (!joining_->next_joined())
      which += (which.empty() ? "to stage " : " and to stage ") + std::to_string(stage_index_ + 1);
    result.failure = DeadlineExceededError(
        "the NCCL link " + which + " did not join within " + std::to_string(kNcclJoinTimeout.count()) +
        " s of the assignment (the neighbour never started its communicator, or cannot reach the NCCL bootstrap "
        "at the coordinator); links aborted");
  } else {
    result.kind = JoinPoll::Kind::kWaiting;
    if (now >= next_join_progress_) {
      result.kind = JoinPoll::Kind::kProgress;
      next_join_progress_ = now + kJoinProgressInterval;
    }
    return result;
  }
  links_pending_ = false;
  result.kind = JoinPoll::Kind::kFailed;
#endif
  return result;
}

void StageLinks::Stop() {
  stop_.store(true);
  if (receiver_) receiver_->Close();  // wakes a receive waiting on the listener
  plane_cv_.notify_all();
  Retire();
  if (receiver_thread_.joinable()) receiver_thread_.join();
  if (plane_reaper_.joinable()) plane_reaper_.join();
}

void StageLinks::Publish(std::shared_ptr<transport::DataPlane> ready) {
  {
    std::lock_guard<std::mutex> lock(plane_mutex_);
    plane_ = std::move(ready);
  }
  plane_cv_.notify_all();
}

// Unpublishes the plane and closes it. The abort and release run on plane_reaper_:
// ncclCommAbort waits for NCCL's own threads and may take longer than a heartbeat interval.
// Received tensors that still hold the old plane's buffers keep them.
//
// The receiver thread may still be inside the old plane's Receive on the shared listener (up to
// kReceivePoll). A TCP plane handing it a frame of the next TCP plane is harmless (the frame is
// delivered all the same), but an NCCL plane refuses in-band frames and headers of other epochs,
// and a TCP plane refuses headers without bytes: a frame meant for the next plane would be lost.
// So when either side is NCCL, this waits (bounded) until the receiver thread is out.
void StageLinks::Retire(bool next_is_nccl) {
  std::shared_ptr<transport::DataPlane> old;
  {
    std::lock_guard<std::mutex> lock(plane_mutex_);
    old.swap(plane_);
  }
  plane_cv_.notify_all();
  std::shared_ptr<transport::DataPlane> old_joining;
#ifdef XCPIPE_HAVE_CUDA
  old_joining = std::move(joining_);
  joining_.reset();
#endif
  links_pending_ = false;
  if (!old && !old_joining) return;
  const transport::DataPlane* retired = old.get();
  const bool wait_for_receiver = old && (next_is_nccl || old->kind() == "nccl");
  if (old) {
    bytes_sent_before_ += old->stats().bytes_sent;
    old->Close();
  }
  if (old_joining) old_joining->Close();
  if (plane_reaper_.joinable()) plane_reaper_.join();
  plane_reaper_ = std::thread([old = std::move(old), old_joining = std::move(old_joining)]() mutable {
#ifdef XCPIPE_HAVE_CUDA
    for (auto* p : {old.get(), old_joining.get()}) {
      if (auto* nccl = dynamic_cast<transport::NcclDataPlane*>(p)) nccl->Abort("replaced by a new assignment");
    }
#endif
    old.reset();
    old_joining.reset();
  });
  if (!wait_for_receiver) return;
  std::unique_lock<std::mutex> lock(plane_mutex_);
  if (!plane_cv_.wait_for(lock, kReceiverLeaveTimeout, [&] { return receiving_on_ != retired; })) {
    spdlog::warn("the data-plane receiver is still in the previous plane after {} ms; going on",
                 std::chrono::duration_cast<std::chrono::milliseconds>(kReceiverLeaveTimeout).count());
  }
}

Status StageLinks::SendActivations(const Activations& a) {
  // The hidden states go device to device over NCCL; TCP frames are host bytes, so a stage on a
  // CUDA device copies them to the host here, at the send, and the next stage moves them back
  // to its device when its step starts. The small side tensors travel as host data.
  const bool device_send = !a.hidden.is_cpu() && data_plane_ == "nccl";
  at::Tensor hidden = device_send ? a.hidden.contiguous() : a.hidden.to(at::kCPU).contiguous();
  at::Tensor mask = a.im_mask.to(at::kCPU).to(at::kByte).contiguous();
  at::Tensor micros = at::tensor(a.stage_micros, at::kLong);
  uint8_t flag = a.want_logits ? 1 : 0;
  transport::StageMessage msg;
  msg.epoch = a.epoch;
  msg.micro_batch_id = a.micro_batch;
  msg.step = a.step;
  msg.segments = a.segments;
  const auto hidden_dtype = hidden.scalar_type() == at::kBFloat16 ? transport::DType::kBF16
                            : hidden.scalar_type() == at::kHalf   ? transport::DType::kF16
                                                                  : transport::DType::kF32;
  auto f1 = device_send ? transport::TensorFrame::Share("hidden", hidden_dtype, hidden.sizes().vec(), BytesOf(hidden),
                                                        std::make_shared<at::Tensor>(hidden),
                                                        transport::MemoryLocation::kCudaDevice,
                                                        static_cast<int>(hidden.device().index()))
                        : transport::TensorFrame::Borrow("hidden", hidden_dtype, hidden.sizes().vec(), BytesOf(hidden));
  auto f2 = transport::TensorFrame::Borrow("im_mask", transport::DType::kU8, mask.sizes().vec(), BytesOf(mask));
  auto f3 =
      transport::TensorFrame::Borrow("stage_micros", transport::DType::kI64, micros.sizes().vec(), BytesOf(micros));
  auto f4 = transport::TensorFrame::Borrow("flags", transport::DType::kU8, {1},
                                           {reinterpret_cast<const std::byte*>(&flag), 1});
  if (!f1.ok() || !f2.ok() || !f3.ok() || !f4.ok()) return InternalError("cannot frame activations");
  msg.tensors = {*f1, *f2, *f3, *f4};
  if (!a.beam_parents.empty()) {
    // Beam groups: every stage reorders by the parents; the last stage needs the tokens and scores.
    const auto n = static_cast<int64_t>(a.beam_parents.size());
    auto bytes = [](const auto& v) {
      return std::span<const std::byte>(reinterpret_cast<const std::byte*>(v.data()), v.size() * sizeof(v[0]));
    };
    auto parents = transport::TensorFrame::Borrow("beam_parents", transport::DType::kI64, {n}, bytes(a.beam_parents));
    auto tokens = transport::TensorFrame::Borrow("beam_tokens", transport::DType::kI64, {n}, bytes(a.beam_tokens));
    auto scores = transport::TensorFrame::Borrow("beam_scores", transport::DType::kF32, {n}, bytes(a.beam_scores));
    if (!parents.ok() || !tokens.ok() || !scores.ok() || a.beam_tokens.size() != a.beam_parents.size() ||
        a.beam_scores.size() != a.beam_parents.size()) {
      return InternalError("cannot frame the beam rows of activations");
    }
    msg.tensors.push_back(*parents);
    msg.tensors.push_back(*tokens);
    msg.tensors.push_back(*scores);
  }
  if (!plane_) {
    return FailedPreconditionError("stage " + std::to_string(stage_index_) + " has no data plane to stage " +
                                   std::to_string(stage_index_ + 1) + " yet");
  }
  // TCP writes the frame; NCCL sends the header over TCP and the tensors with ncclSend: the
  // hidden states in place on the device, after the step's kernels (the event below), the host
  // side tensors through a staging copy. Send returns once the device has sent them, so the
  // step's inputs and outputs are no longer read when this step ends.
#ifdef XCPIPE_HAVE_CUDA
  if (device_send) {
    auto event = cuda::RecordComputeDone(static_cast<int>(hidden.device().index()));
    if (!event.ok()) return AbortedError(event.status().message());
    msg.ready_event = std::move(event).value();
  }
#endif
  if (Status st = plane_->Send(msg, transport::DeadlineAfter(kSendDeadline)); !st.ok()) {
    return AbortedError(st.message()).WithContext("hand-off to stage " + std::to_string(stage_index_ + 1));
  }
  return OkStatus();
}

void StageLinks::ReceiverLoop() {
  while (!stop_.load()) {
    std::shared_ptr<transport::DataPlane> current;
    {
      std::unique_lock<std::mutex> lock(plane_mutex_);
      // No plane (between assignments): wait for one; wake now and then to see a stop.
      if (!plane_) plane_cv_.wait_for(lock, kReceivePoll, [this] { return plane_ != nullptr || stop_.load(); });
      current = plane_;
      receiving_on_ = current.get();
    }
    if (!current) continue;
    auto message = current->Receive(transport::DeadlineAfter(kReceivePoll));
    {
      std::lock_guard<std::mutex> lock(plane_mutex_);
      receiving_on_ = nullptr;
    }
    plane_cv_.notify_all();
    if (!message.ok()) {
      switch (message.status().code()) {
        case StatusCode::kDeadlineExceeded:  // nothing arrived
        case StatusCode::kCancelled:         // the plane was retired (or the process stops)
          break;
        case StatusCode::kFailedPrecondition: {  // the first stage: nothing comes in on this plane
          std::unique_lock<std::mutex> lock(plane_mutex_);
          plane_cv_.wait_for(lock, kReceivePoll, [&] { return plane_ != current || stop_.load(); });
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
    const bool hidden_stays = CudaOrdinal(device_).has_value();
    if (Status st = transport::CopyTensorsToHost(*message, hidden_stays ? "hidden" : ""); !st.ok()) {
      spdlog::warn("data plane: {}", st.ToString());
      continue;
    }
#endif
    {
      std::lock_guard<std::mutex> lock(queue_mutex_);
      queue_.push_back(std::move(*message));
    }
    if (on_received_) on_received_();
  }
}

}  // namespace xcpipe::worker
