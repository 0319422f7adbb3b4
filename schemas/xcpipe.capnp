# The xcpipe control-plane protocol.
# Architecture: docs/architecture.md, "The wire protocol" (every message, sender and receiver).
#
# Every control message, in both directions, is one `Envelope` serialised as a single flat
# Cap'n Proto message (capnp::messageToFlatArray) in one ZeroMQ frame. The coordinator binds a
# ROUTER; workers and clients connect DEALERs. Tensor bytes never travel inside a capnp
# message: the data plane (worker/transport) sends a header followed by raw frames.
#
# Versioning: `kProtocolVersion` changes whenever a change is not wire-compatible. The first
# message on every connection is `hello`; the coordinator answers `welcome` or an `error` with
# code `failedPrecondition` naming both versions, and ignores the peer afterwards.
#
# Untrusted input: every reader sets capnp::ReaderOptions (traversal and nesting limits) and
# checks each field it uses; see schemas/include/xcpipe/schemas/wire.h.
@0xaf0f7fee1f6d78cf;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("xcpipe::proto");

# 2: Error names what it concerns in fields of their own (requestId for a client's request,
#    sequenceId, microBatchId); version 1 carried all three in requestId.
# 3: a worker's compute watchdog declares itself with a hello of role `watchdog` naming the
#    worker it speaks for (`Hello.watches`); version 2 marked it with an identity suffix.
# 4: vision workers: AssignStage.vision, EncodeImage / ImageEncoded, Forward.imageIds,
#    Capabilities.imageAddress, StageReady.vision, Error.imageId.
const kProtocolVersion :UInt32 = 4;

# Canonical error codes; the numbers equal xcpipe::StatusCode (common/base/status.h).
enum ErrorCode {
  ok @0;
  invalidArgument @1;     # the sender sent something wrong; retrying will not help
  notFound @2;            # a named thing (request, sequence, tensor) does not exist
  resourceExhausted @3;   # no memory, KV room, queue space or quota
  unavailable @4;         # not ready or unreachable; retry later
  deadlineExceeded @5;    # a deadline passed
  aborted @6;             # cut short by a fault; the coordinator re-plans and replays
  failedPrecondition @7;  # wrong state for this message (e.g. protocol version mismatch)
  internal @8;            # a bug
  unimplemented @9;       # not supported by this build
  permissionDenied @10;   # authentication refused
  cancelled @11;          # the requester gave up
  alreadyExists @12;      # a name that must be unique is held (a worker id another live process has)
}

# Who is speaking.
enum Role {
  worker @0;       # holds one device and runs one pipeline stage
  client @1;       # submits prompts, asks for status
  coordinator @2;  # plans, admits, schedules, heals
  watchdog @3;     # a worker's compute watchdog: a second connection of the worker's process that
                   # heartbeats for it through a long step and reports a stuck one (`Hello.watches`
                   # names the worker; the coordinator sends it nothing, not even a welcome)
}

# What a peer brings. Workers fill every field; clients only `host` and `pid`.
struct Capabilities {
  host @0 :Text;              # host name as the peer sees itself
  pid @1 :UInt32;             # operating-system process id
  device @2 :Text;            # "cuda:0" or "cpu"
  deviceName @3 :Text;        # e.g. "NVIDIA H100 80GB HBM3" or the CPU model
  memoryBytes @4 :UInt64;     # total device memory (CPU workers: the memory they may use)
  freeMemoryBytes @5 :UInt64; # free device memory when the hello was sent
  dataPlanes @6 :List(Text);  # transports the peer can use for activations: "tcp", "nccl"
  dataAddress @7 :Text;       # where neighbours reach this worker's TCP data plane ("host:port")
  threads @8 :UInt32;         # compute threads (CPU workers)
  buildVersion @9 :Text;      # xcpipe version string, for the status table
  computeDtypes @10 :List(Text);  # dtypes this worker can compute in on its device: "f32", "bf16",
                                  # "f16" (a CPU worker has no f16: libtorch has no CPU half GEMM)
  kernels @11 :Text;          # "cpu-fast" (the CPU's own fast paths) or "generic" (the op
                              # sequence a CUDA device runs; always so on a CUDA device)
  memoryBandwidthBytesPerS @12 :UInt64;  # CUDA: device-to-device copy rate measured at start
                                         # (decode is bound by it); 0 when not measured
  matmulTflops @13 :Float64;  # CUDA: bf16 matrix-product rate measured at start (prefill is bound
                              # by it); 0 when not measured
  imageAddress @14 :Text;     # "host:port" of this worker's image inbox (a ZeroMQ PULL socket over
                              # TCP): when it holds the embed block and vision workers encode the
                              # images, their embeddings arrive there (one data-plane frame each)
}

# First message on a connection, peer -> coordinator.
struct Hello {
  protocolVersion @0 :UInt32;  # must equal kProtocolVersion
  role @1 :Role;
  capabilities @2 :Capabilities;
  workerId @3 :Text;           # stable name chosen by the launcher (e.g. "node-a/cuda:0"); empty for clients
  epoch @4 :UInt64;            # last epoch this worker served under (0 when fresh); lets a restarted
                               # coordinator adopt workers that still hold their weights
  watches @5 :Text;            # role watchdog: the control identity (routing id) of the worker it
                               # speaks for; its heartbeats and its error count as that worker's
}

# The coordinator's answer to an accepted hello.
struct Welcome {
  protocolVersion @0 :UInt32;  # the coordinator's version (equal to the peer's)
  epoch @1 :UInt64;            # cluster epoch; messages from older epochs are refused
  heartbeatIntervalMs @2 :UInt32;  # how often each side sends a heartbeat
  heartbeatTimeoutMs @3 :UInt32;   # silence after which the peer is declared dead
}

# Liveness, both directions. A heartbeat proves the sender's event loop is running; workers
# also report progress so a frozen compute loop is detected even when the socket is alive.
struct Heartbeat {
  sequence @0 :UInt64;         # increments by one per heartbeat from this sender
  sentAtUnixMs @1 :UInt64;     # sender's wall clock, for diagnostics only (never for timeouts)
  epoch @2 :UInt64;            # the epoch the sender believes current
  stepsCompleted @3 :UInt64;   # workers: forward steps finished so far (progress watchdog)
  residentBytes @4 :UInt64;    # workers: memory in use (CPU: RSS; CUDA: allocated)
  resources @5 :ResourceSample;  # workers: memory by category, step times, traffic (see below)
  microBatch @6 :UInt64;       # workers: the micro-batch being computed when sent, 0 when idle
                               # (keeps a long step from being taken for a lost one)
}

# Memory by category, as planned or as used.
struct MemoryBreakdown {
  weightBytes @0 :UInt64;      # model weights held
  kvBytes @1 :UInt64;          # KV cache (planned: the stage's budget; used: room reserved by admitted sequences)
  activationBytes @2 :UInt64;  # activations and working buffers (used: process memory not counted above)
}

# What a worker measured about itself, sampled when it sends a heartbeat (cheap: one read of
# /proc/self/statm or cudaMemGetInfo, and a sort of at most a few thousand step times).
struct ResourceSample {
  capacityBytes @0 :UInt64;     # memory the worker may use (its limit, or the device's total)
  usedBytes @1 :UInt64;         # memory this process uses: CPU the resident set size; CUDA the bytes
                                # libtorch's caching allocator has allocated (other processes on
                                # the GPU are not counted), or total minus free where it cannot be read
  deviceFreeBytes @2 :UInt64;   # CUDA: free device memory (cudaMemGetInfo); CPU: 0
  allocatorBytes @3 :UInt64;    # CUDA: bytes the caching allocator has reserved from the driver
                                # (allocated plus cached); 0 where it cannot be read
  used @4 :MemoryBreakdown;     # usedBytes split by category
  kvBudgetBytes @5 :UInt64;     # KV cache budget of this stage
  kvReservedBytes @6 :UInt64;   # KV room reserved by admitted sequences
  kvUsedBytes @7 :UInt64;       # KV bytes holding cached tokens (<= kvReservedBytes)
  stepP50Micros @8 :UInt64;     # median compute time of one step over the recent window
  stepP99Micros @9 :UInt64;     # 99th percentile of the same
  stepsInWindow @10 :UInt32;    # steps the percentiles were computed from
  windowMs @11 :UInt32;         # length of the window idleFraction covers
  idleFraction @12 :Float64;    # share of the window spent not computing (the pipeline bubble), 0..1
  busyMicrosTotal @13 :UInt64;  # compute time of every step since the process started
  bytesSent @14 :UInt64;        # activation bytes sent to the next stage since the process started
  queuedSteps @15 :UInt32;      # steps received and waiting to run on this stage
  decoderLayerMicrosTotal @16 :UInt64;  # compute time of every decoder layer run so far
  decoderLayersTimed @17 :UInt64;       # how many decoder-layer runs that time covers (the
                                        # ratio compares workers' speeds: all layers cost alike)
}

# An explicit failure, in reply to a message or unsolicited.
struct Error {
  code @0 :ErrorCode;
  message @1 :Text;       # human text naming what was wrong and what was expected
  requestId @2 :UInt64;   # coordinator -> client: the client's request id it concerns, 0 when none
  stalledMs @3 :UInt32;   # a worker's compute watchdog: how long its step made no progress
  sequenceId @4 :UInt64;  # worker -> coordinator: the sequence it concerns (its admission), 0 when none
  microBatchId @5 :UInt64;  # worker -> coordinator: the micro-batch whose step failed, 0 when none
  imageId @6 :UInt64;       # vision worker -> coordinator: the image whose encode failed, 0 when none
}

# ---------------------------------------------------------------------------------------
# Coordinator -> worker: stage lifecycle
# ---------------------------------------------------------------------------------------

# Which blocks this worker holds and how it talks to its neighbours. Sent after `welcome`;
# the worker answers with `loadProgress` messages and then `stageReady` (or `error`).
# A new assignment with a higher epoch replaces the previous one (re-plan after a fault); a
# worker keeps the blocks it already holds when the range is unchanged. A repeat of the same epoch
# (re-sent when the coordinator heard nothing for a while) is the same assignment: a worker whose
# NCCL links are joining or joined keeps them (ids are single-use) and answers when ready.
struct AssignStage {
  epoch @0 :UInt64;           # cluster epoch this assignment belongs to
  stageIndex @1 :UInt32;      # 0 = first stage (vision + embed), stageCount-1 = last (head)
  stageCount @2 :UInt32;
  blockBegin @3 :UInt32;      # contiguous blocks [blockBegin, blockEnd) of the model spec
  blockEnd @4 :UInt32;
  modelPath @5 :Text;         # checkpoint folder as seen from the worker's host
  dtype @6 :Text;             # compute dtype: "f32", "bf16" or "f16" (the coordinator resolves "auto"
                              # before it assigns: every worker of a plan computes in one dtype)
  kvBudgetBytes @7 :UInt64;   # KV cache the plan gave this stage
  nextDataAddress @8 :Text;   # "host:port" of the next stage's data plane; empty on the last stage
  specOverrides @9 :Text;     # JSON object of model facts a checkpoint cannot state (tiny test
                              # towers' head counts: {"vision_heads": 2, "qformer_heads": 2}); may be empty
  maxBatchRows @10 :UInt32;   # largest number of rows one step may carry (sizes receive buffers)
  # How activations travel on this stage's links (the coordinator chooses one per plan):
  #   "tcp"  frames with their tensor bytes to nextDataAddress (also what an empty value means);
  #   "nccl" the same frames without their bytes (header only, to nextDataAddress), the bytes
  #          device to device with ncclSend/ncclRecv on a 2-rank communicator per stage link.
  dataPlane @11 :Text;
  previousNcclId @12 :Data;   # "nccl": the 128-byte ncclUniqueId of the link from stage stageIndex-1 (this
                              # stage is rank 1 of it); empty on stage 0 and for "tcp"
  nextNcclId @13 :Data;       # "nccl": the ncclUniqueId of the link to stage stageIndex+1 (this stage is
                              # rank 0 of it; the next stage gets the same bytes as previousNcclId); empty on
                              # the last stage and for "tcp". Fresh ids every epoch: a communicator is never reused
  vision @14 :Bool;           # a vision worker: [blockBegin, blockEnd) is the vision block alone (with
                              # the projector and the HD separators); it takes no steps, encodes the
                              # images sent to it (EncodeImage) and sends their embeddings to
                              # nextDataAddress, the embed stage's image inbox (Capabilities.imageAddress).
                              # stageIndex is 0, stageCount the language pipeline's; no KV, no NCCL
}

# Loading progress, worker -> coordinator, at most a few per second.
struct LoadProgress {
  epoch @0 :UInt64;
  stageIndex @1 :UInt32;
  bytesDone @2 :UInt64;
  bytesTotal @3 :UInt64;
}

# The worker holds its blocks and is connected to its next stage.
struct StageReady {
  epoch @0 :UInt64;
  stageIndex @1 :UInt32;
  weightBytes @2 :UInt64;      # weights held (after any dtype cast)
  kvBytesPerToken @3 :UInt64;  # KV bytes one token of one sequence costs on this stage
  residentBytes @4 :UInt64;    # process memory in use after loading
  loadMs @5 :UInt32;           # time the load took
  weightsKept @6 :Bool;        # the blocks were already loaded (same range): nothing was read again
  dtype @7 :Text;              # the dtype the stage computes in ("f32", "bf16", "f16")
  device @8 :Text;             # the device its tensors live on ("cpu", "cuda:K")
  vision @9 :Bool;             # the answer of a vision worker (AssignStage.vision)
}

# Sampling parameters of one sequence (Hugging Face generate() semantics).
struct SamplingParams {
  greedy @0 :Bool = true;
  temperature @1 :Float64 = 1.0;
  topK @2 :UInt32;              # 0 = off
  topP @3 :Float64 = 1.0;       # 1.0 = off
  repetitionPenalty @4 :Float64 = 1.0;
  seed @5 :UInt64;
  minNewTokens @6 :UInt32;      # the stop ids cannot be sampled before this many new tokens
  ignoreEos @7 :Bool;           # a stop id does not end the sequence: it runs to maxNewTokens
  # Beam search (Hugging Face 4.33's, as the official chat() runs it; numBeams 0 or 1: none). The
  # coordinator keeps the search: a sequence that carries these is a beam group (see
  # AdmitSequence.beamCandidates). greedy must be true; repetitionPenalty applies per beam.
  numBeams @8 :UInt32;          # beams of the group, 2..64 (0 and 1: greedy or sampled decoding)
  lengthPenalty @9 :Float64 = 1.0;  # a hypothesis' score is its sum / length ** lengthPenalty
  earlyStopping @10 :UInt8;     # 0: HF's False (stop when no running beam can beat the kept
                                # hypotheses), 1: True (stop once numBeams are kept), 2: "never"
  minLength @11 :UInt32;        # HF min_length: EOS is masked while the penalty context plus the
                                # new tokens are shorter than this
}

# A sequence enters the pipeline: every stage reserves KV room for maxTokens; the last stage
# also creates its sampler. The coordinator only admits what every stage has room for.
struct AdmitSequence {
  epoch @0 :UInt64;
  sequenceId @1 :UInt64;
  maxTokens @2 :UInt32;               # prompt + new tokens
  sampling @3 :SamplingParams;
  penaltyContext @4 :List(Int64);     # tokens the repetition penalty covers before generation
  prefixSequenceId @5 :UInt64;        # with prefixRows > 0: copy the KV of positions
  prefixRows @6 :UInt32;              # [0, prefixRows) from this sequence, which every stage holds
                                      # and has already stepped (the shared prompt head); the
                                      # sequence's first step then starts at prefixRows. 0: none
  stopIds @7 :List(Int64);            # the ids the last stage masks while fewer than
                                      # sampling.minNewTokens tokens have been generated
  generatedTokens @8 :UInt32;         # new tokens generated before this admission (a replay
                                      # prefills them with the prompt); they count toward
                                      # minNewTokens
  prefillRows @9 :UInt32;             # rows before the first sampled token (prompt plus
                                      # generatedTokens): the last stage samples no token for
                                      # a step that ends before them (a piece of a long prompt)
  beamSequenceIds @10 :List(UInt64); # a beam group: the other beams' sequences, reserved with this
                                      # one (maxTokens each), all or nothing. Only this sequence is
                                      # prefilled; the others take its KV at the group's first decode
                                      # step (Forward.beamParents: a copy, the cache is not paged)
  beamCandidates @11 :UInt32;         # > 0: the group is a beam search. The last stage returns, per
                                      # beam row, this many best candidates (StepResult.candidate*)
                                      # instead of a sampled token: the row's float32 log_softmax,
                                      # the repetition penalty over that beam's penalty context (the
                                      # one given here, then the tokens each step feeds it), stopIds
                                      # masked while fewer than sampling.minNewTokens tokens were fed,
                                      # plus Forward.beamScores; ties to the lower token id
}

# Sequences leave: every stage frees their KV room (and the last stage their samplers).
struct ReleaseSequences {
  epoch @0 :UInt64;
  sequenceIds @1 :List(UInt64);
}

# One sequence's rows within a step.
struct Segment {
  sequenceId @0 :UInt64;
  rows @1 :UInt32;       # rows this step adds (prompt length at prefill, 1 when decoding)
  startPos @2 :UInt32;   # tokens already in the sequence's cache
}

# One preprocessed image (float32 CHW, little-endian), ready for the vision block.
struct ImageTensor {
  channels @0 :UInt32;
  height @1 :UInt32;
  width @2 :UInt32;
  gridH @3 :UInt32;      # HD tile grid (1x1 for fixed-size models)
  gridW @4 :UInt32;
  pixels @5 :Data;       # channels*height*width float32 values; the size is checked
}

# Coordinator -> first stage: run one micro-batch step. The first stage embeds tokens (and
# encodes images), then hidden states flow stage to stage over the data plane; the last stage
# samples and answers with `stepResult`.
struct Forward {
  epoch @0 :UInt64;
  microBatchId @1 :UInt64;
  step @2 :UInt64;                # increments per micro-batch step (diagnostics, ordering)
  segments @3 :List(Segment);
  tokenIds @4 :List(Int64);       # one per row; -1 at image rows
  imMask @5 :Data;                # one byte per row, 1 at image rows
  images @6 :List(ImageTensor);   # in the order of their slots
  wantLogits @7 :Bool;            # return the full last-row logits (fixture checks)
  beamParents @8 :List(Int32);    # empty, or one per segment: -1, or the index of the segment whose
                                  # sequence this segment's sequence continues, as it stood before
                                  # this step (beam groups: every stage reorders or copies those KV
                                  # rooms first; a segment continuing itself names its own index)
  beamScores @9 :List(Float32);   # empty, or one per segment: a beam's score, which the last stage
                                  # adds to the row's scores before it picks candidates (0 elsewhere)
  imageIds @10 :List(UInt64);     # images a vision worker encoded (EncodeImage.imageId), in slot order,
                                  # instead of `images`: the first stage takes their rows from its
                                  # image inbox, waiting (bounded) for any still on the way
}

# Coordinator -> vision worker: encode one image and send its embedding rows to the embed stage's
# image inbox as one data-plane frame (StageHeader.microBatchId = imageId, one segment naming
# sequenceId with the image's rows, one tensor "image_embeds" [rows, hidden]); then answer
# `imageEncoded`, or an `error` naming the imageId. A repeat (the answer was lost) encodes again.
struct EncodeImage {
  epoch @0 :UInt64;
  imageId @1 :UInt64;      # chosen by the coordinator, unique per coordinator
  sequenceId @2 :UInt64;   # the sequence whose prompt holds the image: the embed stage drops rows
                           # it still keeps for a sequence that is released
  image @3 :ImageTensor;
}

# Vision worker -> coordinator: the embedding of `imageId` was handed to the embed stage's inbox.
struct ImageEncoded {
  epoch @0 :UInt64;
  imageId @1 :UInt64;
  rows @2 :UInt32;           # embedding rows (the image's rows in the prompt)
  encodeMicros @3 :UInt64;   # the vision block's compute time for this image
  bytes @4 :UInt64;          # bytes sent to the embed stage
}

# Last stage -> coordinator: the sampled token of every sequence in the micro-batch.
struct StepResult {
  epoch @0 :UInt64;
  microBatchId @1 :UInt64;
  step @2 :UInt64;
  sequenceIds @3 :List(UInt64);
  tokens @4 :List(Int64);         # tokens[i] belongs to sequenceIds[i]
  logits @5 :Data;                # wantLogits: float32 [sequences, vocab]
  stageMicros @6 :List(UInt32);   # compute time of each stage for this step, in order
  candidateCounts @7 :List(UInt32);  # beam groups: per sequence, how many candidates below are its
                                     # row's (best first; 0 for other sequences and prompt pieces)
  candidateTokens @8 :List(Int64);   # the candidates of every row, in sequence order
  candidateTotals @9 :List(Float32); # beam score plus the token's processed log-probability
}

# Stop accepting new work and finish what is in flight (the worker's state becomes draining;
# `shutdown` follows).
struct Drain {
  reason @0 :Text;
}

# Exit now (after a drain, or on coordinator shutdown).
struct Shutdown {
  reason @0 :Text;
}

# ---------------------------------------------------------------------------------------
# Client <-> coordinator
# ---------------------------------------------------------------------------------------

# A prompt: a string, or a list of strings (one turn each, the official batch/multi-part
# form), each with as many <ImageHere> placeholders as images.
struct Submit {
  requestId @0 :UInt64;            # chosen by the client, unique per connection
  promptJson @1 :Text;             # JSON: a string or a list of strings (validated at the edge)
  images @2 :List(Data);           # encoded PNG or JPEG files, in placeholder order
  maxNewTokens @3 :UInt32;
  sampling @4 :SamplingParams;
  deadlineMs @5 :UInt32;           # 0 = the coordinator's default
  # Pre-tokenized form (when tokenIds is not empty, promptJson and images are ignored): the
  # prompt exactly as the model sees it, for clients that build prompts themselves and for
  # checking a cluster against golden outputs. Ids are checked against the vocabulary.
  tokenIds @6 :List(Int64);        # -1 at image rows
  imMask @7 :Data;                 # one byte per token, 1 at Partial-LoRA rows
  pixelImages @8 :List(ImageTensor);  # preprocessed images in slot order
  penaltyContext @9 :List(Int64);  # tokens the repetition penalty covers before generation
  wantLogits @10 :Bool;            # return the logits each token was chosen from
}

# Coordinator -> client: tokens as they are generated, then a final event.
struct TokenEvent {
  requestId @0 :UInt64;
  tokens @1 :List(Int64);          # new token ids since the previous event
  text @2 :Text;                   # the decoded text of these tokens
  done @3 :Bool;                   # last event of the request
  finishReason @4 :Text;           # "stop", "length", or the error code name when failed
  promptTokens @5 :UInt32;
  ttftMicros @6 :UInt64;           # admission to first token
  promptIndex @7 :UInt32;          # which prompt of a list-of-strings submit this event belongs to
  error @8 :Text;                  # failed requests: what went wrong and what was expected
  logits @9 :Data;                 # wantLogits: float32 [vocab] the token was chosen from
  # Exactly-once delivery over a control plane that may lose messages:
  offset @10 :UInt32;              # tokens of this prompt generated before this event's `tokens`
  allTokens @11 :List(Int64);      # done events: every generated token of this prompt (fills gaps)
  allText @12 :Text;               # done events: the whole decoded text of this prompt
  promptCount @13 :UInt32;         # prompts in this request (a list-of-strings submit has several)
  accepted @14 :Bool;              # acknowledgement of a submit (no tokens): queued or running;
                                   # a repeated submit of a request in progress is answered so
  retryAfterMs @15 :UInt32;        # a refusal worth repeating here (not serving yet): how soon;
                                   # 0 = do not retry at this coordinator (draining, bad input)
}

struct StatusRequest {
  detail @0 :Bool;
}

struct WorkerStatus {
  workerId @0 :Text;
  host @1 :Text;
  pid @2 :UInt32;
  device @3 :Text;
  state @4 :Text;                  # idle, loading, ready, serving, lost
  stageIndex @5 :Int32;            # -1 when unassigned
  plannedBytes @6 :UInt64;
  usedBytes @7 :UInt64;
  blocks @8 :Text;                 # "vision..layer.7"
  stepsCompleted @9 :UInt64;
  lastHeartbeatMsAgo @10 :UInt32;
  planned @11 :MemoryBreakdown;    # the plan's bytes for this worker's stage, by category
  resources @12 :ResourceSample;   # the worker's last heartbeat figures
  memoryBytes @13 :UInt64;         # memory the worker announced in its hello
  predictedStepMs @14 :Float64;    # the plan's step time for this worker's stage (0 unassigned)
  weightsKept @15 :Bool;           # its last stageReady reused weights already loaded
  dtype @16 :Text;                 # the dtype its stage computes in (from stageReady; empty before)
  kernels @17 :Text;               # "cpu-fast" or "generic" (from its hello)
  role @18 :Text;                  # "stage" (a stage of the language pipeline), "vision" (a vision
                                   # worker), or "spare" (no part in the plan)
  imagesEncoded @19 :UInt64;       # vision workers: images encoded under the current plan
  imagesQueued @20 :UInt32;        # vision workers: images sent to it and not answered yet
  encodeP50Ms @21 :Float64;        # vision workers: median encode time per image (from its answers)
}

# How many requests ended one way, for one reason.
struct ReasonCount {
  reason @0 :Text;                 # an error code name (e.g. "ResourceExhausted") or "busy"
  count @1 :UInt64;
}

struct StatusReply {
  epoch @0 :UInt64;
  state @1 :Text;                  # waiting-for-workers, loading, serving
  workers @2 :List(WorkerStatus);
  queueDepth @3 :UInt32;           # requests waiting for admission
  inFlight @4 :UInt32;             # sequences in the pipeline
  completed @5 :UInt64;
  failed @6 :UInt64;
  model @7 :Text;
  stages @8 :UInt32;
  faults @9 :UInt32;               # stages lost since start
  replays @10 :UInt64;             # sequences replayed after faults
  lastDetectMs @11 :Float64;       # last fault: the lost worker's last sign of life to detection
  lastRecoverMs @12 :Float64;      # last fault: detection to the first step served under the new plan
  submitted @13 :UInt64;           # submits received since start (refused ones included)
  failedByReason @14 :List(ReasonCount);   # failed requests by error code name
  refusedByReason @15 :List(ReasonCount);  # submits refused before queueing ("busy", "InvalidArgument"...)
  ttftP50Ms @16 :Float64;          # time to first token (submit received to first token), median
  ttftP99Ms @17 :Float64;          # and 99th percentile, from the coordinator's histogram
  tokensPerSecondP50 @18 :Float64; # decode speed of finished sequences (after the first token), median
  metricsAddress @19 :Text;        # "host:port" of the Prometheus endpoint; empty when not served
  rebalances @20 :UInt64;          # plans changed because measured stage times were unbalanced
  lastRebalance @21 :Text;         # what the last one saw and did (stage times before, blocks after)
  dataPlane @22 :Text;             # how activations travel under the current plan: "tcp" or "nccl"
                                   # (empty before the first plan)
  dataPlaneReason @23 :Text;       # why that one ("every stage is a CUDA worker with NCCL", or what ruled NCCL out)
  stepsCompleted @24 :UInt64;      # micro-batch steps that came back through the whole pipeline
  stepRoundTripMsTotal @25 :Float64;  # their round trips summed: coordinator send to the last stage's result
  stepComputeMsTotal @26 :Float64;    # the stages' compute within them, summed (the rest: hand-offs and waits)
  stepRoundTripP50Ms @27 :Float64;    # median round trip, from the coordinator's histogram
  dtype @28 :Text;                 # the dtype every stage of the current plan computes in (empty before)
  modelVersion @29 :Text;          # the model's version ("ixc1", "ixc2-vl", "ixc2-4khd", "ixc2.5"): a
                                   # client applies that version's official generation settings by it
  visionStage @30 :Text;           # where the vision block runs under the current plan: "first" (stage 0)
                                   # or "separate" (vision workers); empty before the first plan
  visionReason @31 :Text;          # why (the option asked for, or what `auto` weighed)
  imagesWaiting @32 :UInt32;       # images accepted and not yet sent to a vision worker
  imagesEncoding @33 :UInt32;      # images sent to vision workers and not answered yet
  imagesEncodedTotal @34 :UInt64;  # images vision workers encoded since start
  encodeP50Ms @35 :Float64;        # median encode time per image on vision workers
}

# The one top-level message.
struct Envelope {
  union {
    hello @0 :Hello;
    welcome @1 :Welcome;
    heartbeat @2 :Heartbeat;
    error @3 :Error;
    assignStage @4 :AssignStage;
    loadProgress @5 :LoadProgress;
    stageReady @6 :StageReady;
    admitSequence @7 :AdmitSequence;
    releaseSequences @8 :ReleaseSequences;
    forward @9 :Forward;
    stepResult @10 :StepResult;
    drain @11 :Drain;
    shutdown @12 :Shutdown;
    submit @13 :Submit;
    tokenEvent @14 :TokenEvent;
    statusRequest @15 :StatusRequest;
    statusReply @16 :StatusReply;
    encodeImage @17 :EncodeImage;
    imageEncoded @18 :ImageEncoded;
  }
}
