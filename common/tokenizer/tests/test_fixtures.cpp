#include "test_fixtures.h"

#include <memory>

#include "xcpipe/base/files.h"
#include "xcpipe/base/npy.h"

namespace xcpipe::tokenizer::test {
namespace {

const Tokenizer* LoadOnce(const std::filesystem::path& path, std::unique_ptr<Tokenizer>* slot, bool* tried) {
  if (!*tried) {
    *tried = true;
    if (std::filesystem::exists(path)) {
      auto t = Tokenizer::LoadFromFile(path);
      if (t.ok()) {
        *slot = std::move(t).value();
      } else {
        ADD_FAILURE() << t.status().ToString();
      }
    }
  }
  return slot->get();
}

}  // namespace

const Tokenizer* InternLm2Tokenizer() {
  static std::unique_ptr<Tokenizer> tok;
  static bool tried = false;
  return LoadOnce(Fixtures() / "tokenizer" / "tokenizer.model", &tok, &tried);
}

const Tokenizer* Ixc1Tokenizer() {
  static std::unique_ptr<Tokenizer> tok;
  static bool tried = false;
  return LoadOnce(Fixtures() / "ixc1" / "tokenizer" / "tokenizer.model", &tok, &tried);
}

nlohmann::json ReadJson(const std::filesystem::path& path) {
  auto j = ReadJsonFile(path);
  if (!j.ok()) {
    ADD_FAILURE() << j.status().ToString();
    return nullptr;
  }
  return std::move(j).value();
}

std::vector<int64_t> ReadIdsRow(const std::filesystem::path& npy, int64_t row) {
  auto a = ReadNpy(npy);
  if (!a.ok()) {
    ADD_FAILURE() << a.status().ToString();
    return {};
  }
  const auto all = a->ToInt64();
  if (a->shape.size() < 2) return all;
  const int64_t t = a->shape.back();
  return std::vector<int64_t>(all.begin() + row * t, all.begin() + (row + 1) * t);
}

std::vector<int64_t> ToI64(const std::vector<TokenId>& ids) { return std::vector<int64_t>(ids.begin(), ids.end()); }

}  // namespace xcpipe::tokenizer::test
