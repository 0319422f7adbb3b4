// One round of the control-message fuzzer on outside bytes, shared by the libFuzzer target
// (envelope_fuzz.cpp) and the corpus regression test (tests/envelope_fuzz_corpus_test.cpp).
//
// The bytes go through wire::Decode exactly as a ZeroMQ frame from the network does. When they
// decode, every field of the envelope is read generically (capnp::DynamicStruct): every struct,
// list element, text and data byte a handler could reach, as a hostile message would force the
// coordinator's or a worker's Dispatch to follow it. Cap'n Proto bounds each read (segment
// bounds, the traversal and nesting limits of wire::UntrustedReaderOptions) and reports a
// violation by throwing, which both actors catch as std::exception at their dispatch; so a
// throw is an acceptable outcome, and only a crash, a sanitizer report or a broken invariant is
// a finding:
//   * a refusal by Decode is InvalidArgument with a message;
//   * a message that walks cleanly, deep-copied into a builder (from a fresh decode: the
//     traversal budget is per reader) and encoded again, decodes again and, read with the
//     original's traversal budget, walks to the same digest (what a relay or a re-send sees is
//     what was received).
// Text and data bytes are read in this (instrumented) translation unit, so a pointer Cap'n
// Proto failed to bound would be caught by AddressSanitizer on the message's own buffer.
#pragma once

#include <capnp/dynamic.h>
#include <capnp/message.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <span>
#include <string>

#include "xcpipe/schemas/wire.h"

namespace xcpipe::wire::fuzz {

// What one walk saw: counts, and a digest of every value read (FNV-1a over raw bits).
struct WalkDigest {
  uint64_t structs = 0;
  uint64_t list_elements = 0;
  uint64_t text_bytes = 0;
  uint64_t data_bytes = 0;
  uint64_t scalars = 0;
  uint64_t hash = 1469598103934665603ull;

  void Mix(uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      hash ^= (v >> (8 * i)) & 0xff;
      hash *= 1099511628211ull;
    }
  }
  bool operator==(const WalkDigest&) const = default;
};

inline void WalkValue(const capnp::DynamicValue::Reader& value, WalkDigest& d);

inline void WalkStruct(const capnp::DynamicStruct::Reader& s, WalkDigest& d) {
  ++d.structs;
  for (capnp::StructSchema::Field field : s.getSchema().getNonUnionFields()) {
    d.Mix(field.getIndex());
    WalkValue(s.get(field), d);
  }
  // The active union arm only (reading another arm throws); an unknown discriminant (a newer
  // peer, or a hostile one) has no arm to follow.
  KJ_IF_MAYBE (field, s.which()) {
    d.Mix(0x10000 + field->getIndex());
    WalkValue(s.get(*field), d);
  }
}

inline void WalkValue(const capnp::DynamicValue::Reader& value, WalkDigest& d) {
  switch (value.getType()) {
    case capnp::DynamicValue::UNKNOWN:
    case capnp::DynamicValue::VOID:
      ++d.scalars;
      return;
    case capnp::DynamicValue::BOOL:
      ++d.scalars;
      d.Mix(value.as<bool>() ? 1 : 0);
      return;
    case capnp::DynamicValue::INT:
      ++d.scalars;
      d.Mix(static_cast<uint64_t>(value.as<int64_t>()));
      return;
    case capnp::DynamicValue::UINT:
      ++d.scalars;
      d.Mix(value.as<uint64_t>());
      return;
    case capnp::DynamicValue::FLOAT: {
      ++d.scalars;
      const double v = value.as<double>();
      uint64_t bits = 0;
      std::memcpy(&bits, &v, sizeof bits);
      d.Mix(bits);
      return;
    }
    case capnp::DynamicValue::ENUM:
      ++d.scalars;
      d.Mix(value.as<capnp::DynamicEnum>().getRaw());
      return;
    case capnp::DynamicValue::TEXT: {
      capnp::Text::Reader text = value.as<capnp::Text>();
      const char* p = text.cStr();
      // size() bytes then the NUL Cap'n Proto checked; read each one here.
      for (size_t i = 0; i <= text.size(); ++i) d.Mix(static_cast<unsigned char>(p[i]));
      d.text_bytes += text.size();
      return;
    }
    case capnp::DynamicValue::DATA: {
      capnp::Data::Reader data = value.as<capnp::Data>();
      for (size_t i = 0; i < data.size(); ++i) d.Mix(data[i]);
      d.data_bytes += data.size();
      return;
    }
    case capnp::DynamicValue::LIST: {
      capnp::DynamicList::Reader list = value.as<capnp::DynamicList>();
      d.Mix(list.size());
      for (uint32_t i = 0; i < list.size(); ++i) {
        ++d.list_elements;
        WalkValue(list[i], d);
      }
      return;
    }
    case capnp::DynamicValue::STRUCT:
      WalkStruct(value.as<capnp::DynamicStruct>(), d);
      return;
    case capnp::DynamicValue::ANY_POINTER:
    case capnp::DynamicValue::CAPABILITY:
      // The schema has neither; a control message cannot carry capabilities.
      ++d.scalars;
      return;
  }
}

// How the bytes fared.
enum class EnvelopeOutcome {
  kRefused,   // Decode said InvalidArgument (the framing, the root or the union tag is bad)
  kHostile,   // decoded, but reading its fields hit a Cap'n Proto bound (and threw)
  kWalked,    // decoded and every field read cleanly
};

struct EnvelopeRound {
  EnvelopeOutcome outcome = EnvelopeOutcome::kRefused;
  std::string detail;      // the refusal or the exception's text
  std::string violation;   // non-empty: an invariant was broken (a finding)
  WalkDigest digest;
};

inline std::span<const std::byte> AsByteSpan(const void* data, size_t size) {
  return {static_cast<const std::byte*>(data), size};
}

inline EnvelopeRound FuzzEnvelopeOnce(std::span<const std::byte> bytes) {
  EnvelopeRound round;
  auto decoded = Decode(bytes);
  if (!decoded.ok()) {
    round.detail = decoded.status().ToString();
    if (decoded.status().code() != StatusCode::kInvalidArgument || decoded.status().message().empty()) {
      round.violation = "Decode refused with an unexpected status: " + round.detail;
    }
    return round;
  }
  try {
    WalkStruct(capnp::toDynamic((*decoded)->envelope()), round.digest);
  } catch (const std::exception& e) {
    // What both actors' dispatch loops catch; anything not a std::exception would kill them.
    round.outcome = EnvelopeOutcome::kHostile;
    round.detail = e.what();
    return round;
  }
  round.outcome = EnvelopeOutcome::kWalked;

  // Round trip through a builder, from a fresh decode (a fresh traversal budget).
  std::string reencoded;
  try {
    auto again = Decode(bytes);
    if (!again.ok()) {
      round.violation = "a second Decode of the same bytes failed: " + again.status().ToString();
      return round;
    }
    capnp::MallocMessageBuilder builder;
    builder.setRoot((*again)->envelope());
    reencoded = Encode(builder);
  } catch (const std::exception& e) {
    // The copy reads somewhat differently from the walk and may reach a limit the walk did not.
    return round;
  }
  auto copy = Decode(AsByteSpan(reencoded.data(), reencoded.size()));
  if (!copy.ok()) {
    round.violation = "the re-encoded copy of a valid message was refused: " + copy.status().ToString();
    return round;
  }
  // Walk the copy with the traversal budget the original was given. The budget follows the size
  // on the wire, and a copy can be far smaller than its original (padding and unreachable words
  // are not copied) while holding the same elements: a list of empty structs costs a word per
  // element to read however compactly it is encoded.
  WalkDigest copy_digest;
  try {
    kj::Array<capnp::word> words = kj::heapArray<capnp::word>(reencoded.size() / sizeof(capnp::word));
    std::memcpy(words.begin(), reencoded.data(), words.size() * sizeof(capnp::word));
    capnp::FlatArrayMessageReader reader(words, UntrustedReaderOptions(bytes.size()));
    WalkStruct(capnp::toDynamic(reader.getRoot<proto::Envelope>()), copy_digest);
  } catch (const std::exception& e) {
    round.violation = std::string("the re-encoded copy of a valid message does not walk: ") + e.what();
    return round;
  }
  if (!(copy_digest == round.digest)) round.violation = "the re-encoded copy reads differently from the original";
  return round;
}

}  // namespace xcpipe::wire::fuzz
