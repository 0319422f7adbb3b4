#include "xcpipe/checkpoint/safetensors.h"

#include <algorithm>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "posix_file.h"
#include "strict_json.h"
#include "xcpipe/base/files.h"

namespace xcpipe::checkpoint {

namespace {

using Json = nlohmann::json;
using internal::FileDescriptor;

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ",";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

// A JSON number that is a non-negative integer, as uint64.
std::optional<uint64_t> NonNegativeInteger(const Json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer()) {
    int64_t v = value.get<int64_t>();
    if (v >= 0) return static_cast<uint64_t>(v);
  }
  return std::nullopt;
}

uint64_t ReadLittleEndian64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

Status ParseEntry(const std::string& name, const Json& entry, uint64_t data_bytes, std::string_view what,
                  SafetensorsEntry* out) {
  auto fail = [&](const std::string& why) {
    return InvalidArgumentError(std::string(what) + ": tensor '" + name + "': " + why);
  };
  if (!entry.is_object()) return fail("entry is not a JSON object");
  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) return fail("missing \"dtype\" string");
  const auto& dtype_name = dtype_it->get_ref<const std::string&>();
  // Only the safetensors spellings are valid inside a safetensors header.
  auto dtype = ParseDType(dtype_name);
  if (!dtype || DTypeName(*dtype) != dtype_name) return fail("unknown dtype \"" + dtype_name + "\"");

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) return fail("missing \"shape\" array");
  std::vector<int64_t> shape;
  uint64_t numel = 1;
  bool overflow = false;
  for (const auto& dim : *shape_it) {
    auto d = NonNegativeInteger(dim);
    if (!d) return fail("shape " + shape_it->dump() + " holds a negative or non-integer dimension");
    if (*d > static_cast<uint64_t>(INT64_MAX)) return fail("dimension " + std::to_string(*d) + " is too large");
    shape.push_back(static_cast<int64_t>(*d));
    if (__builtin_mul_overflow(numel, *d, &numel)) overflow = true;
  }
  uint64_t bytes = 0;
  if (overflow || __builtin_mul_overflow(numel, DTypeBytes(*dtype), &bytes) || numel > (uint64_t{1} << 62)) {
    return fail("shape " + ShapeText(shape) + " has too many elements");
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
    return fail("missing \"data_offsets\" [begin, end]");
  }
  auto begin = NonNegativeInteger((*offsets_it)[0]);
  auto end = NonNegativeInteger((*offsets_it)[1]);
  if (!begin || !end) return fail("data_offsets " + offsets_it->dump() + " are not non-negative integers");
  if (*end < *begin) return fail("data_offsets " + offsets_it->dump() + " end before they begin");
  if (*end - *begin != bytes) {
    return fail("data_offsets [" + std::to_string(*begin) + "," + std::to_string(*end) + "] hold " +
                std::to_string(*end - *begin) + " bytes, but shape " + ShapeText(shape) + " of " + dtype_name + " (" +
                std::to_string(DTypeBytes(*dtype)) + " bytes per element) needs " + std::to_string(bytes) +
                " (wrong dtype size or shape)");
  }
  if (*end > data_bytes) {
    return fail("data ends at byte " + std::to_string(*end) + " of the data section, which holds only " +
                std::to_string(data_bytes) + " bytes (truncated file?)");
  }
  out->info.name = name;
  out->info.dtype = *dtype;
  out->info.shape = std::move(shape);
  out->begin = *begin;
  out->end = *end;
  return OkStatus();
}

}  // namespace

StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header_json, uint64_t file_bytes,
                                                   std::string_view what) {
  const uint64_t n = header_json.size();
  if (n > kMaxSafetensorsHeaderBytes) {
    return InvalidArgumentError(std::string(what) + ": header of " + std::to_string(n) +
                                " bytes is over the limit of " + std::to_string(kMaxSafetensorsHeaderBytes) +
                                " (not a safetensors file?)");
  }
  if (file_bytes < 8 || n > file_bytes - 8) {
    return InvalidArgumentError(std::string(what) + ": header of " + std::to_string(n) +
                                " bytes runs past the end of the file (" + std::to_string(file_bytes) +
                                " bytes; truncated file?)");
  }
  SafetensorsHeader header;
  header.header_bytes = n;
  header.data_section_offset = 8 + n;
  const uint64_t data_bytes = file_bytes - header.data_section_offset;

  XCPIPE_ASSIGN_OR_RETURN(Json doc, internal::ParseStrictJson<Json>(header_json, std::string(what) + ": header"));
  if (!doc.is_object()) return InvalidArgumentError(std::string(what) + ": header is not a JSON object");

  for (const auto& [name, value] : doc.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) return InvalidArgumentError(std::string(what) + ": __metadata__ is not an object");
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string()) {
          return InvalidArgumentError(std::string(what) + ": __metadata__ value of '" + key + "' is not a string");
        }
        header.metadata[key] = text.get<std::string>();
      }
      continue;
    }
    SafetensorsEntry entry;
    XCPIPE_RETURN_IF_ERROR(ParseEntry(name, value, data_bytes, what, &entry));
    header.entries.push_back(std::move(entry));
  }

  std::sort(header.entries.begin(), header.entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // Overlap check over non-empty tensors in offset order: each must start at or after the
  // furthest end seen so far. (Empty tensors own no bytes and cannot overlap.)
  const SafetensorsEntry* furthest = nullptr;
  for (const auto& e : header.entries) {
    if (e.begin == e.end) continue;
    if (furthest && e.begin < furthest->end) {
      return InvalidArgumentError(std::string(what) + ": tensor '" + e.info.name + "' [" + std::to_string(e.begin) +
                                  "," + std::to_string(e.end) + ") overlaps tensor '" + furthest->info.name + "' [" +
                                  std::to_string(furthest->begin) + "," + std::to_string(furthest->end) +
                                  ") (overlapping data_offsets)");
    }
    if (!furthest || e.end > furthest->end) furthest = &e;
  }
  return header;
}

StatusOr<SafetensorsHeader> ParseSafetensorsFile(std::string_view file_bytes, std::string_view what) {
  if (file_bytes.size() < 8) {
    return InvalidArgumentError(std::string(what) + ": " + std::to_string(file_bytes.size()) +
                                " bytes, shorter than the 8-byte header length (truncated file?)");
  }
  uint64_t n = ReadLittleEndian64(file_bytes.data());
  if (n > kMaxSafetensorsHeaderBytes) {
    return InvalidArgumentError(std::string(what) + ": header length " + std::to_string(n) + " is over the limit of " +
                                std::to_string(kMaxSafetensorsHeaderBytes) + " (not a safetensors file?)");
  }
  if (n > file_bytes.size() - 8) {
    return InvalidArgumentError(std::string(what) + ": header length " + std::to_string(n) +
                                " runs past the end of the file (" + std::to_string(file_bytes.size()) +
                                " bytes; truncated file?)");
  }
  return ParseSafetensorsHeader(file_bytes.substr(8, n), file_bytes.size(), what);
}

StatusOr<SafetensorsHeader> ReadSafetensorsHeader(const std::filesystem::path& file) {
  const std::string what = file.string();
  XCPIPE_ASSIGN_OR_RETURN(FileDescriptor fd, internal::OpenForReading(file));
  XCPIPE_ASSIGN_OR_RETURN(uint64_t size, internal::FileSize(fd, file));
  if (size < 8) {
    return InvalidArgumentError(what + ": " + std::to_string(size) +
                                " bytes, shorter than the 8-byte header length (truncated file?)");
  }
  char prefix[8];
  XCPIPE_RETURN_IF_ERROR(internal::ReadAt(fd, 0, prefix, 8, file));
  uint64_t n = ReadLittleEndian64(prefix);
  if (n > kMaxSafetensorsHeaderBytes) {
    return InvalidArgumentError(what + ": header length " + std::to_string(n) + " is over the limit of " +
                                std::to_string(kMaxSafetensorsHeaderBytes) + " (not a safetensors file?)");
  }
  if (n > size - 8) {
    return InvalidArgumentError(what + ": header length " + std::to_string(n) + " runs past the end of the file (" +
                                std::to_string(size) + " bytes; truncated file?)");
  }
  std::string header(n, '\0');
  XCPIPE_RETURN_IF_ERROR(internal::ReadAt(fd, 8, header.data(), n, file));
  return ParseSafetensorsHeader(header, size, what);
}

std::vector<std::string> SafetensorsIndex::Shards() const {
  std::set<std::string> shards;
  for (const auto& [name, shard] : weight_map) shards.insert(shard);
  return {shards.begin(), shards.end()};
}

StatusOr<SafetensorsIndex> ReadSafetensorsIndex(const std::filesystem::path& index_file) {
  const std::string what = index_file.string();
  XCPIPE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_file, uint64_t{256} << 20));
  XCPIPE_ASSIGN_OR_RETURN(Json doc, internal::ParseStrictJson<Json>(text, what));
  if (!doc.is_object()) return InvalidArgumentError(what + ": not a JSON object");
  auto map_it = doc.find("weight_map");
  if (map_it == doc.end() || !map_it->is_object()) return InvalidArgumentError(what + ": no \"weight_map\" object");
  SafetensorsIndex index;
  for (const auto& [name, shard] : map_it->items()) {
    if (!shard.is_string()) return InvalidArgumentError(what + ": weight_map['" + name + "'] is not a file name");
    const auto& file = shard.get_ref<const std::string&>();
    if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos ||
        file.find('\0') != std::string::npos) {
      return InvalidArgumentError(what + ": weight_map['" + name + "'] = \"" + file +
                                  "\" is not a plain file name in the checkpoint folder");
    }
    index.weight_map.emplace(name, file);
  }
  if (auto meta = doc.find("metadata"); meta != doc.end() && meta->is_object()) {
    if (auto total = meta->find("total_size"); total != meta->end()) index.total_size = NonNegativeInteger(*total);
  }
  return index;
}

// ---------------------------------------------------------------------------------------------
// Writing.

StatusOr<std::unique_ptr<SafetensorsFileWriter>> SafetensorsFileWriter::Create(
    const std::filesystem::path& file, std::vector<Entry> entries, const std::map<std::string, std::string>& metadata) {
  const std::string what = file.string();
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::unordered_set<std::string> names;
  uint64_t offset = 0;
  for (const auto& e : entries) {
    if (e.name.empty() || e.name == "__metadata__") {
      return InvalidArgumentError(what + ": '" + e.name + "' cannot be a tensor name");
    }
    if (!names.insert(e.name).second) return InvalidArgumentError(what + ": tensor '" + e.name + "' given twice");
    uint64_t numel = 1;
    for (int64_t d : e.shape) {
      if (d < 0) return InvalidArgumentError(what + ": tensor '" + e.name + "': negative dimension");
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel)) {
        return InvalidArgumentError(what + ": tensor '" + e.name + "': too many elements");
      }
    }
    uint64_t bytes = numel * DTypeBytes(e.dtype);
    header[e.name] = {
        {"dtype", std::string(DTypeName(e.dtype))}, {"shape", e.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const std::exception& e) {  // a name that is not valid UTF-8
    return InvalidArgumentError(what + ": cannot write the header: " + e.what());
  }
  // Pad so the data section starts 8-byte aligned (spaces are valid JSON whitespace).
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');

  std::unique_ptr<SafetensorsFileWriter> writer(new SafetensorsFileWriter());
  writer->file_ = file;
  writer->tmp_ = file;
  writer->tmp_ += ".partial";
  writer->entries_ = std::move(entries);
  writer->fd_ = ::open(writer->tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (writer->fd_ < 0) {
    return InvalidArgumentError(writer->tmp_.string() + ": cannot create: " + internal::ErrnoText(errno));
  }
  char prefix[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  XCPIPE_RETURN_IF_ERROR(internal::WriteAll(writer->fd_, std::string_view(prefix, 8), writer->tmp_));
  XCPIPE_RETURN_IF_ERROR(internal::WriteAll(writer->fd_, text, writer->tmp_));
  return writer;
}

SafetensorsFileWriter::~SafetensorsFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_ && !tmp_.empty()) {
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
  }
}

Status SafetensorsFileWriter::Append(std::string_view bytes) {
  if (finished_ || fd_ < 0) return FailedPreconditionError(file_.string() + ": Append after Finish");
  if (next_ >= entries_.size()) {
    return FailedPreconditionError(file_.string() + ": more tensors appended than the " +
                                   std::to_string(entries_.size()) + " declared");
  }
  const Entry& e = entries_[next_];
  TensorInfo info{e.name, e.dtype, e.shape, {}};
  if (bytes.size() != info.bytes()) {
    return InvalidArgumentError(file_.string() + ": tensor '" + e.name + "': " + std::to_string(bytes.size()) +
                                " bytes given, shape " + ShapeText(e.shape) + " of " + std::string(DTypeName(e.dtype)) +
                                " needs " + std::to_string(info.bytes()));
  }
  XCPIPE_RETURN_IF_ERROR(internal::WriteAll(fd_, bytes, tmp_));
  data_bytes_ += bytes.size();
  ++next_;
  return OkStatus();
}

Status SafetensorsFileWriter::Finish() {
  if (finished_) return OkStatus();
  if (next_ != entries_.size()) {
    return FailedPreconditionError(file_.string() + ": " + std::to_string(next_) + " of " +
                                   std::to_string(entries_.size()) + " tensors written before Finish");
  }
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) return InternalError(tmp_.string() + ": close: " + internal::ErrnoText(errno));
  std::error_code ec;
  std::filesystem::rename(tmp_, file_, ec);
  if (ec) return InternalError("rename " + tmp_.string() + " -> " + file_.string() + ": " + ec.message());
  finished_ = true;
  return OkStatus();
}

Status WriteSafetensors(const std::filesystem::path& file, const std::vector<TensorToWrite>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsFileWriter::Entry> entries;
  entries.reserve(tensors.size());
  for (const auto& t : tensors) entries.push_back({t.name, t.dtype, t.shape});
  XCPIPE_ASSIGN_OR_RETURN(auto writer, SafetensorsFileWriter::Create(file, std::move(entries), metadata));
  for (const auto& t : tensors) XCPIPE_RETURN_IF_ERROR(writer->Append(t.bytes));
  return writer->Finish();
}

Status WriteSafetensorsIndex(const std::filesystem::path& dir, const std::map<std::string, std::string>& weight_map,
                             uint64_t total_size) {
  nlohmann::ordered_json doc;
  doc["metadata"] = {{"total_size", total_size}};
  doc["weight_map"] = weight_map;
  std::string text;
  try {
    text = doc.dump(2) + "\n";
  } catch (const std::exception& e) {  // a name that is not valid UTF-8
    return InvalidArgumentError((dir / kSafetensorsIndexFileName).string() + ": cannot write: " + e.what());
  }
  return WriteFileAtomically(dir / kSafetensorsIndexFileName, text);
}

// ---------------------------------------------------------------------------------------------
// Tensor tables of a checkpoint folder.

StatusOr<TensorTable> ReadCheckpointTensorTable(const std::filesystem::path& dir) {
  TensorTable table;
  table.source = dir.string();
  const auto index_path = dir / kSafetensorsIndexFileName;
  std::error_code ec;
  if (std::filesystem::exists(index_path, ec)) {
    XCPIPE_ASSIGN_OR_RETURN(SafetensorsIndex index, ReadSafetensorsIndex(index_path));
    std::map<std::string, std::vector<std::string>> names_by_shard;
    for (const auto& [name, shard] : index.weight_map) names_by_shard[shard].push_back(name);
    std::vector<std::string> unlisted;
    for (const auto& [shard, names] : names_by_shard) {
      const auto path = dir / shard;
      if (!std::filesystem::exists(path, ec)) {
        return NotFoundError(index_path.string() + " names shard '" + shard + "' (" + std::to_string(names.size()) +
                             " tensors, e.g. '" + names.front() + "'), but " + path.string() + " does not exist");
      }
      XCPIPE_ASSIGN_OR_RETURN(SafetensorsHeader header, ReadSafetensorsHeader(path));
      std::unordered_set<std::string> held;
      for (auto& entry : header.entries) {
        held.insert(entry.info.name);
        if (!index.weight_map.count(entry.info.name)) unlisted.push_back(shard + ": " + entry.info.name);
        entry.info.file = shard;
        table.tensors.push_back(std::move(entry.info));
      }
      for (const auto& name : names) {
        if (!held.count(name)) {
          return NotFoundError(index_path.string() + " maps tensor '" + name + "' to shard '" + shard +
                               "', which does not hold it");
        }
      }
    }
    if (!unlisted.empty()) {
      std::string list;
      for (size_t i = 0; i < unlisted.size() && i < 20; ++i) list += (i ? ", " : "") + unlisted[i];
      if (unlisted.size() > 20) list += ", ... (" + std::to_string(unlisted.size()) + " in all)";
      return InvalidArgumentError(dir.string() + ": shards hold tensors that " +
                                  std::string(kSafetensorsIndexFileName) + " does not list: " + list);
    }
    return table;
  }
  const auto single = dir / kSingleSafetensorsFileName;
  if (std::filesystem::exists(single, ec)) {
    XCPIPE_ASSIGN_OR_RETURN(SafetensorsHeader header, ReadSafetensorsHeader(single));
    for (auto& entry : header.entries) {
      entry.info.file = kSingleSafetensorsFileName;
      table.tensors.push_back(std::move(entry.info));
    }
    return table;
  }
  std::string hint;
  for (const auto& item : std::filesystem::directory_iterator(dir, ec)) {
    if (item.path().extension() == ".bin") {
      hint = " (it holds " + item.path().filename().string() +
             ": convert pytorch_model*.bin with 'xcpipe convert --in DIR --out NEWDIR')";
      break;
    }
  }
  return NotFoundError(dir.string() + ": no " + std::string(kSafetensorsIndexFileName) + " or " +
                       kSingleSafetensorsFileName + hint);
}

}  // namespace xcpipe::checkpoint
