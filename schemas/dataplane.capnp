# The xcpipe data-plane header: what travels with the activations between neighbouring
# pipeline stages (worker/transport).
#
# One stage hand-off is one frame on the wire:
#
#   +-----------------------+----------------------------+------------------------------+
#   | preamble (24 bytes)   | header: one flat Cap'n     | tensor bytes, back to back,  |
#   | magic, version, flags,| Proto `StageHeader`        | in `tensors` order, no       |
#   | header length + CRC,  | (headerBytes long)         | padding (payloadBytes long)  |
#   | payload length        |                            |                              |
#   +-----------------------+----------------------------+------------------------------+
#
# The preamble is fixed-size little-endian, laid out in worker/transport/src/frame.h. Tensor
# bytes never travel inside this message: the header only describes them, and the receiver
# checks every description (sizes against shapes, totals against its limits, checksums) before
# it hands a tensor to the stage. Over NCCL the header still travels over TCP and the tensor
# bytes go device to device (the preamble's out-of-band flag says so; payloadBytes is 0).
#
# Versioning: the preamble carries the frame version (kDataPlaneVersion). A change that is not
# wire-compatible bumps it; a receiver refuses any other version and names both.
#
# Untrusted input: the header is read with explicit capnp::ReaderOptions, and its size, list
# lengths, names and shapes are all bounded by the receiver's MessageLimits.
@0xc27053f6c6b80e00;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("xcpipe::proto::dataplane");

# Version of the frame layout (preamble + this header). Mirrored in frame.h.
const kDataPlaneVersion :UInt16 = 1;

# Element type of a tensor. Sizes: f32 4, bf16 2, f16 2, i64 8, u8 1, bool 1 (one byte per
# element, 0 or 1). All multi-byte values are little-endian.
enum DType {
  f32 @0;    # IEEE 754 binary32 (hidden states in f32 runs)
  bf16 @1;   # bfloat16 (hidden states in bf16 runs)
  f16 @2;    # IEEE 754 binary16
  i64 @3;    # signed 64-bit integers (positions, token ids)
  u8 @4;     # unsigned bytes
  bool @5;   # one byte per element (the per-row image mask)
}

# How the tensor bytes are protected.
enum ChecksumKind {
  none @0;     # no checksum (connections configured without one; NCCL out-of-band payloads)
  crc32c @1;   # CRC-32C (Castagnoli, reflected, init and xor-out 0xFFFFFFFF) of each tensor's bytes
}

# One sequence's rows within a micro-batch step, in row order.
struct Segment {
  sequenceId @0 :UInt64;  # the sequence these rows belong to (coordinator-assigned)
  rows @1 :Int64;         # rows this step adds for the sequence (prompt length at prefill, 1 decoding); >= 0
  startPos @2 :Int64;     # tokens already in the sequence's KV cache before these rows; >= 0
}

# Describes one raw tensor frame that follows the header.
struct TensorDescriptor {
  name @0 :Text;            # what the tensor is ("hidden", "im_mask", "positions"); unique in a message
  dtype @1 :DType;          # element type
  shape @2 :List(Int64);    # dimensions, outermost first; each >= 0; rank bounded by the receiver
  byteLength @3 :UInt64;    # must equal product(shape) * size(dtype), checked with overflow checks
  checksum @4 :UInt32;      # CRC-32C of the tensor's bytes when checksumKind is crc32c, else 0
}

# The header of one stage hand-off (one micro-batch step leaving a stage).
struct StageHeader {
  epoch @0 :UInt64;                    # cluster epoch; the receiving stage refuses older epochs
  microBatchId @1 :UInt64;             # which micro-batch in flight this is
  step @2 :UInt64;                     # the micro-batch's step (0 = prefill), for ordering and diagnostics
  segments @3 :List(Segment);          # the sequences whose rows the tensors carry, in row order
  tensors @4 :List(TensorDescriptor);  # the tensor frames after the header, in this order
  checksumKind @5 :ChecksumKind;       # how every descriptor's `checksum` was computed
}
