# The xcpipe control-plane protocol.
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

const kProtocolVersion :UInt32 = 1;

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
}

# Who is speaking.
enum Role {
  worker @0;       # holds one device and runs one pipeline stage
  client @1;       # submits prompts, asks for status
  coordinator @2;  # plans, admits, schedules, heals
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
}

# First message on a connection, peer -> coordinator.
struct Hello {
  protocolVersion @0 :UInt32;  # must equal kProtocolVersion
  role @1 :Role;
  capabilities @2 :Capabilities;
  workerId @3 :Text;           # stable name chosen by the launcher (e.g. "node-a/cuda:0"); empty for clients
  epoch @4 :UInt64;            # last epoch this worker served under (0 when fresh); lets a restarted
                               # coordinator adopt workers that still hold their weights
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
}

# An explicit failure, in reply to a message or unsolicited.
struct Error {
  code @0 :ErrorCode;
  message @1 :Text;       # human text naming what was wrong and what was expected
  requestId @2 :UInt64;   # the request it concerns, 0 when none
}

# The one top-level message.
struct Envelope {
  union {
    hello @0 :Hello;
    welcome @1 :Welcome;
    heartbeat @2 :Heartbeat;
    error @3 :Error;
  }
}
