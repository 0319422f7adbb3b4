#include "xcpipe/base/npy.h"

#include <cstring>
#include <regex>

#include "xcpipe/base/files.h"

namespace xcpipe {
namespace {

size_t ItemBytes(const std::string& dtype) {
  if (dtype == "f4" || dtype == "i4") return 4;
  if (dtype == "f8" || dtype == "i8") return 8;
  if (dtype == "u1" || dtype == "b1") return 1;
  return 0;
}

template <typename Out>
std::vector<Out> Convert(const NpyArray& a) {
  const int64_t n = a.numel();
  std::vector<Out> out(static_cast<size_t>(n));
  const uint8_t* p = a.bytes.data();
  for (int64_t i = 0; i < n; ++i) {
    if (a.dtype == "f4") { float v; std::memcpy(&v, p + 4 * i, 4); out[i] = static_cast<Out>(v); }
    else if (a.dtype == "f8") { double v; std::memcpy(&v, p + 8 * i, 8); out[i] = static_cast<Out>(v); }
    else if (a.dtype == "i8") { int64_t v; std::memcpy(&v, p + 8 * i, 8); out[i] = static_cast<Out>(v); }
    else if (a.dtype == "i4") { int32_t v; std::memcpy(&v, p + 4 * i, 4); out[i] = static_cast<Out>(v); }
    else { out[i] = static_cast<Out>(p[i]); }
  }
  return out;
}

}  // namespace

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
size_t NpyArray::item_bytes() const { return ItemBytes(dtype); }
std::vector<float> NpyArray::ToFloat() const { return Convert<float>(*this); }
std::vector<double> NpyArray::ToDouble() const { return Convert<double>(*this); }
std::vector<int64_t> NpyArray::ToInt64() const { return Convert<int64_t>(*this); }

StatusOr<NpyArray> ParseNpy(std::string_view data, std::string_view what) {
  auto fail = [&](const std::string& why) { return InvalidArgumentError(std::string(what) + ": " + why); };
  if (data.size() < 10 || data.substr(0, 6) != "\x93NUMPY") return fail("not a .npy file (bad magic)");
  const uint8_t major = static_cast<uint8_t>(data[6]);
  size_t header_len = 0, offset = 0;
  if (major == 1) {
    header_len = static_cast<uint8_t>(data[8]) | (static_cast<size_t>(static_cast<uint8_t>(data[9])) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (data.size() < 12) return fail("truncated header");
    uint32_t len;
    std::memcpy(&len, data.data() + 8, 4);
    header_len = len;
    offset = 12;
  } else {
    return fail("unsupported .npy version " + std::to_string(major));
  }
  if (offset + header_len > data.size()) return fail("header runs past the end of the file");
  std::string header(data.substr(offset, header_len));
  std::smatch m;
  static const std::regex kDescr(R"('descr'\s*:\s*'([<|>=])([a-z]\d+)')");
  static const std::regex kFortran(R"('fortran_order'\s*:\s*(True|False))");
  static const std::regex kShape(R"('shape'\s*:\s*\(([^)]*)\))");
  if (!std::regex_search(header, m, kDescr)) return fail("header has no descr");
  if (m[1] == ">") return fail("big-endian arrays are not supported");
  NpyArray out;
  out.dtype = m[2];
  if (ItemBytes(out.dtype) == 0) return fail("unsupported dtype '" + out.dtype + "'; expected f4, f8, i8, i4, u1 or b1");
  if (!std::regex_search(header, m, kFortran)) return fail("header has no fortran_order");
  if (m[1] == "True") return fail("Fortran-order arrays are not supported");
  if (!std::regex_search(header, m, kShape)) return fail("header has no shape");
  std::string dims = m[1];
  static const std::regex kInt(R"(\d+)");
  for (auto it = std::sregex_iterator(dims.begin(), dims.end(), kInt); it != std::sregex_iterator(); ++it) {
    if (it->str().size() > 15) return fail("dimension too large");
    out.shape.push_back(std::stoll(it->str()));
  }
  const size_t payload = data.size() - offset - header_len;
  long double want = out.item_bytes();
  for (int64_t d : out.shape) want *= d;
  if (want != static_cast<long double>(payload)) {
    return fail("payload is " + std::to_string(payload) + " bytes but the shape needs " +
                std::to_string(static_cast<uint64_t>(want)));
  }
  const auto* begin = reinterpret_cast<const uint8_t*>(data.data() + offset + header_len);
  out.bytes.assign(begin, begin + payload);
  return out;
}

StatusOr<NpyArray> ReadNpy(const std::filesystem::path& path) {
  XCPIPE_ASSIGN_OR_RETURN(std::string data, ReadFileToString(path, uint64_t{4} << 30));
  return ParseNpy(data, path.string());
}

}  // namespace xcpipe
