// Internal: the few POSIX file operations the checkpoint code needs, returning Status.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

#include "xcpipe/base/status.h"

namespace xcpipe::checkpoint::internal {

// Owns one file descriptor (closed on destruction). Resource type.
class FileDescriptor {
 public:
  FileDescriptor() = default;
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() { Reset(); }
  FileDescriptor(FileDescriptor&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  FileDescriptor& operator=(FileDescriptor&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = other.fd_;
      other.fd_ = -1;
    }
    return *this;
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;

  int get() const { return fd_; }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

inline std::string ErrnoText(int err) { return std::strerror(err); }

// Opens for reading; NotFound when the file does not exist.
inline StatusOr<FileDescriptor> OpenForReading(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return NotFoundError(path.string() + ": no such file");
    if (err == EACCES) return PermissionDeniedError(path.string() + ": permission denied");
    return InvalidArgumentError(path.string() + ": cannot open: " + ErrnoText(err));
  }
  return FileDescriptor(fd);
}

inline StatusOr<uint64_t> FileSize(const FileDescriptor& fd, const std::filesystem::path& path) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return InvalidArgumentError(path.string() + ": fstat: " + ErrnoText(errno));
  if (!S_ISREG(st.st_mode)) return InvalidArgumentError(path.string() + ": not a regular file");
  return static_cast<uint64_t>(st.st_size);
}

// Reads exactly `size` bytes at `offset`.
inline Status ReadAt(const FileDescriptor& fd, uint64_t offset, char* out, size_t size,
                     const std::filesystem::path& path) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd.get(), out + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return InvalidArgumentError(path.string() + ": read: " + ErrnoText(errno));
    }
    if (n == 0) return InvalidArgumentError(path.string() + ": unexpected end of file (truncated?)");
    done += static_cast<size_t>(n);
  }
  return OkStatus();
}

inline Status WriteAll(int fd, std::string_view bytes, const std::filesystem::path& path) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      if (err == ENOSPC) return ResourceExhaustedError(path.string() + ": disk full");
      return InternalError(path.string() + ": write: " + ErrnoText(err));
    }
    done += static_cast<size_t>(n);
  }
  return OkStatus();
}

}  // namespace xcpipe::checkpoint::internal
