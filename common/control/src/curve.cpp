#include "xcpipe/control/curve.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "xcpipe/base/files.h"

namespace xcpipe::control {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kMaxKeyFileBytes = 64 << 10;

Status NoCurve() {
  return UnimplementedError(
      "CURVE security is not available in this build: the installed libzmq was built without "
      "libsodium/CURVE (zmq_has(\"curve\") is false)");
}

std::string Trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

// The key lines of a key file: not blank, not a '#' comment.
std::vector<std::string> KeyLines(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = Trim(text.substr(start, end - start));
    if (!line.empty() && line[0] != '#') out.push_back(line);
    start = end + 1;
  }
  return out;
}

// One key from a .key/.pub file. Error messages about a secret file never quote its content.
StatusOr<std::string> SingleKey(const fs::path& path, const std::string& text, bool secret) {
  const auto lines = KeyLines(text);
  const std::string kind = secret ? "secret key file" : "public key file";
  if (lines.size() != 1) {
    return InvalidArgumentError(kind + " " + path.string() + ": expected exactly one 40-character Z85 key line, found " +
                                std::to_string(lines.size()) + " (written by `xcpipe keys generate`)");
  }
  if (Status st = ValidateZ85Key(lines[0], kind + " " + path.string()); !st.ok()) return st;
  return lines[0];
}

Status WriteNewFile(const fs::path& path, const std::string& contents, mode_t mode) {
  // O_EXCL + the final mode at creation: a secret is never on disk with wider permissions,
  // not even for an instant.
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return UnavailableError("cannot create " + path.string() + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return UnavailableError("cannot write " + path.string() + ": " + std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) return UnavailableError("cannot write " + path.string());
  return OkStatus();
}

}  // namespace

bool CurveAvailable() { return zmq_has("curve") != 0; }

StatusOr<CurveKeyPair> GenerateKeyPair() {
  if (!CurveAvailable()) return NoCurve();
  std::array<char, kZ85KeyChars + 1> pub{}, sec{};
  if (zmq_curve_keypair(pub.data(), sec.data()) != 0) {
    return InternalError(std::string("zmq_curve_keypair failed: ") + zmq_strerror(zmq_errno()));
  }
  CurveKeyPair out{std::string(pub.data(), kZ85KeyChars), std::string(sec.data(), kZ85KeyChars)};
  std::fill(sec.begin(), sec.end(), '\0');
  return out;
}

StatusOr<std::string> DerivePublicKey(const std::string& secret_key_z85) {
  if (!CurveAvailable()) return NoCurve();
  if (Status st = ValidateZ85Key(secret_key_z85, "secret key"); !st.ok()) return st;
  std::array<char, kZ85KeyChars + 1> pub{};
  if (zmq_curve_public(pub.data(), secret_key_z85.c_str()) != 0) {
    return InvalidArgumentError(std::string("cannot derive the public key: ") + zmq_strerror(zmq_errno()));
  }
  return std::string(pub.data(), kZ85KeyChars);
}

Status ValidateZ85Key(const std::string& key, const std::string& what) {
  static constexpr std::string_view kZ85Alphabet =
      "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
  if (key.size() != kZ85KeyChars) {
    return InvalidArgumentError(what + ": expected a 40-character Z85 key, got " + std::to_string(key.size()) +
                                " characters");
  }
  for (size_t i = 0; i < key.size(); ++i) {
    if (kZ85Alphabet.find(key[i]) == std::string_view::npos) {
      return InvalidArgumentError(what + ": expected a 40-character Z85 key; character " + std::to_string(i + 1) +
                                  " is not in the Z85 alphabet");
    }
  }
  std::array<uint8_t, 32> raw{};
  if (zmq_z85_decode(raw.data(), key.c_str()) == nullptr) {
    return InvalidArgumentError(what + ": not a valid Z85 key (does not decode to 32 bytes)");
  }
  return OkStatus();
}

std::string KeyFingerprint(const std::string& public_key_z85) { return public_key_z85.substr(0, 8); }

StatusOr<std::string> ReadSecretKeyFile(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return NotFoundError("secret key file " + path.string() + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) return InvalidArgumentError("secret key file " + path.string() + ": not a regular file");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return PermissionDeniedError("secret key file " + path.string() + " is accessible by group or others (mode " +
                                 mode + "); it must be private to its owner: chmod 600 " + path.string());
  }
  auto text = ReadFileToString(path, kMaxKeyFileBytes);
  if (!text.ok()) return text.status().WithContext("secret key file");
  return SingleKey(path, *text, /*secret=*/true);
}

StatusOr<std::string> ReadPublicKeyFile(const fs::path& path) {
  auto text = ReadFileToString(path, kMaxKeyFileBytes);
  if (!text.ok()) return text.status().WithContext("public key file");
  return SingleKey(path, *text, /*secret=*/false);
}

StatusOr<std::set<std::string>> ReadAllowList(const fs::path& path) {
  std::error_code ec;
  std::set<std::string> keys;
  if (fs::is_directory(path, ec)) {
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(path, ec)) {
      if (entry.path().extension() == ".pub") files.push_back(entry.path());
    }
    if (ec) return UnavailableError("allow-list folder " + path.string() + ": " + ec.message());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      auto key = ReadPublicKeyFile(f);
      if (!key.ok()) return key.status().WithContext("allow-list " + path.string());
      keys.insert(*key);
    }
  } else {
    auto text = ReadFileToString(path, kMaxKeyFileBytes);
    if (!text.ok()) return text.status().WithContext("allow-list");
    size_t line_no = 0, start = 0;
    while (start <= text->size()) {
      size_t end = text->find('\n', start);
      if (end == std::string::npos) end = text->size();
      ++line_no;
      const std::string line = Trim(text->substr(start, end - start));
      start = end + 1;
      if (line.empty() || line[0] == '#') continue;
      if (Status st = ValidateZ85Key(line, "allow-list " + path.string() + " line " + std::to_string(line_no));
          !st.ok()) {
        return st;
      }
      keys.insert(line);
    }
  }
  if (keys.empty()) {
    return InvalidArgumentError("allow-list " + path.string() +
                                ": no public keys (expected a folder of *.pub files or a file with one Z85 key per line)");
  }
  return keys;
}

Status WriteKeyPair(const CurveKeyPair& keys, const fs::path& dir, const std::string& name, bool overwrite) {
  if (name.empty() || name.find('/') != std::string::npos || name[0] == '.') {
    return InvalidArgumentError("key name '" + name + "': expected a plain file name such as 'coordinator'");
  }
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return UnavailableError("cannot create " + dir.string() + ": " + std::strerror(errno));
    }
  }
  const fs::path secret = dir / (name + ".key");
  const fs::path pub = dir / (name + ".pub");
  for (const auto& p : {secret, pub}) {
    if (fs::exists(fs::symlink_status(p, ec))) {
      if (!overwrite) {
        return FailedPreconditionError(p.string() + " already exists; refusing to overwrite a key (use --force to replace it)");
      }
      if (!fs::remove(p, ec)) return UnavailableError("cannot remove " + p.string() + ": " + ec.message());
    }
  }
  if (Status st = WriteNewFile(secret,
                               "# xcpipe CURVE secret key (Z85). Keep it private: mode 0600, never share it.\n" +
                                   keys.secret_key + "\n",
                               0600);
      !st.ok()) {
    return st;
  }
  return WriteNewFile(pub, "# xcpipe CURVE public key (Z85) of '" + name + "'. Copy it to the coordinator's allow-list.\n" +
                               keys.public_key + "\n",
                      0644);
}

// This process's own key pair: the secret read from its (0600) file, the public derived from it.
StatusOr<CurveConfig> LoadOwnKeys(const fs::path& secret_key_file) {
  if (!CurveAvailable()) return NoCurve();
  CurveConfig c;
  auto secret = ReadSecretKeyFile(secret_key_file);
  if (!secret.ok()) return secret.status();
  auto pub = DerivePublicKey(*secret);
  if (!pub.ok()) return pub.status().WithContext(secret_key_file.string());
  c.secret_key = std::move(secret).value();
  c.public_key = std::move(pub).value();
  return c;
}

StatusOr<CurveConfig> LoadServerCurve(const fs::path& secret_key_file, const fs::path& allow_list) {
  auto c = LoadOwnKeys(secret_key_file);
  if (!c.ok()) return c.status();
  auto allowed = ReadAllowList(allow_list);
  if (!allowed.ok()) return allowed.status();
  c->allowed_keys = std::move(allowed).value();
  return c;
}

StatusOr<CurveConfig> LoadClientCurve(const fs::path& secret_key_file, const fs::path& server_public_key_file) {
  auto c = LoadOwnKeys(secret_key_file);
  if (!c.ok()) return c.status();
  auto server = ReadPublicKeyFile(server_public_key_file);
  if (!server.ok()) return server.status().WithContext("--server-key");
  c->server_public_key = std::move(server).value();
  return c;
}

StatusOr<CurveConfig> CurveFromFlags(const std::string& secret_key_file, const std::string& server_key_file,
                                     const std::string& allow_list, bool server) {
  const std::string& peer = server ? allow_list : server_key_file;
  const std::string peer_flag = server ? "--allow" : "--server-key";
  const std::string& wrong = server ? server_key_file : allow_list;
  if (!wrong.empty()) {
    return InvalidArgumentError(std::string(server ? "--server-key" : "--allow") + " is not used here (" +
                                (server ? "the coordinator takes --secret-key and --allow" :
                                          "workers and clients take --secret-key and --server-key") + ")");
  }
  if (secret_key_file.empty() && peer.empty()) return CurveConfig{};
  if (secret_key_file.empty()) return InvalidArgumentError(peer_flag + " needs --secret-key too");
  if (peer.empty()) return InvalidArgumentError("--secret-key needs " + peer_flag + " too");
  return server ? LoadServerCurve(secret_key_file, allow_list) : LoadClientCurve(secret_key_file, server_key_file);
}

Status WriteClusterKeys(const fs::path& dir) {
  for (const char* name : {"coordinator", "worker", "client"}) {
    auto keys = GenerateKeyPair();
    if (!keys.ok()) return keys.status();
    if (Status st = WriteKeyPair(*keys, dir, name, /*overwrite=*/false); !st.ok()) return st;
  }
  return OkStatus();
}

}  // namespace xcpipe::control
