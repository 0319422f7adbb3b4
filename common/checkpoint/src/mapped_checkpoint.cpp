#include <sys/mman.h>
#include <unistd.h>

#include <unordered_map>

#include "posix_file.h"
#include "xcpipe/checkpoint/safetensors.h"

namespace xcpipe::checkpoint {

namespace {

// A zero-length tensor has no bytes to map; its view points here.
const char kEmptyTensorData[8] = {};

uint64_t PageBytes() {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  return page;
}

}  // namespace

MappedCheckpoint::~MappedCheckpoint() {
  for (const auto& m : mappings_) ::munmap(m.address, m.length);
}

StatusOr<std::unique_ptr<MappedCheckpoint>> MappedCheckpoint::Open(
    const std::filesystem::path& dir, const std::function<bool(const std::string&)>& want) {
  // Which shard to read each wanted tensor from.
  std::map<std::string, std::vector<std::string>> wanted_by_shard;
  std::filesystem::path index_path = dir / kSafetensorsIndexFileName;
  std::error_code ec;
  bool has_index = std::filesystem::exists(index_path, ec);
  if (has_index) {
    XCPIPE_ASSIGN_OR_RETURN(SafetensorsIndex index, ReadSafetensorsIndex(index_path));
    for (const auto& [name, shard] : index.weight_map) {
      if (want(name)) wanted_by_shard[shard].push_back(name);
    }
  } else if (std::filesystem::exists(dir / kSingleSafetensorsFileName, ec)) {
    wanted_by_shard[kSingleSafetensorsFileName];  // filled from the header below
  } else {
    return NotFoundError(dir.string() + ": no " + std::string(kSafetensorsIndexFileName) + " or " +
                         kSingleSafetensorsFileName);
  }

  std::unique_ptr<MappedCheckpoint> checkpoint(new MappedCheckpoint());
  const uint64_t page = PageBytes();
  for (auto& [shard, names] : wanted_by_shard) {
    const auto path = dir / shard;
    if (has_index && !std::filesystem::exists(path, ec)) {
      return NotFoundError(index_path.string() + " names shard '" + shard + "' for " + std::to_string(names.size()) +
                           " wanted tensors (e.g. '" + names.front() + "'), but " + path.string() +
                           " does not exist (missing shard)");
    }
    XCPIPE_ASSIGN_OR_RETURN(internal::FileDescriptor fd, internal::OpenForReading(path));
    // The header is read through the same descriptor that is mapped, so a file replaced
    // between the two cannot pair one file's offsets with another's bytes.
    XCPIPE_ASSIGN_OR_RETURN(uint64_t size, internal::FileSize(fd, path));
    if (size < 8) return InvalidArgumentError(path.string() + ": shorter than 8 bytes (truncated file?)");
    char prefix[8];
    XCPIPE_RETURN_IF_ERROR(internal::ReadAt(fd, 0, prefix, 8, path));
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(prefix[i]);
    if (n > kMaxSafetensorsHeaderBytes || n > size - 8) {
      return InvalidArgumentError(path.string() + ": header length " + std::to_string(n) +
                                  " is over the limit or past the end of the file (" + std::to_string(size) +
                                  " bytes; truncated file?)");
    }
    std::string header_json(n, '\0');
    XCPIPE_RETURN_IF_ERROR(internal::ReadAt(fd, 8, header_json.data(), n, path));
    XCPIPE_ASSIGN_OR_RETURN(SafetensorsHeader header, ParseSafetensorsHeader(header_json, size, path.string()));

    std::unordered_map<std::string, const SafetensorsEntry*> entries;
    for (const auto& e : header.entries) entries.emplace(e.info.name, &e);
    if (!has_index) {
      for (const auto& e : header.entries) {
        if (want(e.info.name)) names.push_back(e.info.name);
      }
    }
    for (const auto& name : names) {
      auto it = entries.find(name);
      if (it == entries.end()) {
        return NotFoundError(index_path.string() + " maps tensor '" + name + "' to shard '" + shard +
                             "', which does not hold it");
      }
      const SafetensorsEntry& e = *it->second;
      TensorInfo info = e.info;
      info.file = shard;
      const void* data = kEmptyTensorData;
      const uint64_t bytes = e.end - e.begin;
      if (bytes > 0) {
        const uint64_t absolute = header.data_section_offset + e.begin;
        const uint64_t aligned = absolute / page * page;
        const uint64_t length = absolute + bytes - aligned;
        void* address = ::mmap(nullptr, length, PROT_READ, MAP_PRIVATE, fd.get(), static_cast<off_t>(aligned));
        if (address == MAP_FAILED) {
          int err = errno;
          std::string message = path.string() + ": tensor '" + name + "': mmap of " + std::to_string(length) +
                                " bytes failed: " + internal::ErrnoText(err);
          if (err == ENOMEM) return ResourceExhaustedError(message);
          return InternalError(message);
        }
        const uint64_t rounded = (length + page - 1) / page * page;
        checkpoint->mappings_.push_back({address, rounded});
        checkpoint->mapped_bytes_ += rounded;
        data = static_cast<const char*>(address) + (absolute - aligned);
      }
      checkpoint->tensor_bytes_ += bytes;
      checkpoint->tensors_.emplace(name, std::make_pair(std::move(info), data));
    }
  }
  return checkpoint;
}

StatusOr<MappedCheckpoint::View> MappedCheckpoint::Get(std::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return NotFoundError("tensor '" + std::string(name) + "' is not mapped by this stage's checkpoint view");
  }
  return View{&it->second.first, it->second.second};
}

bool MappedCheckpoint::Has(std::string_view name) const { return tensors_.find(name) != tensors_.end(); }

std::vector<std::string> MappedCheckpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, tensor] : tensors_) names.push_back(name);
  return names;
}

}  // namespace xcpipe::checkpoint
